"""A raw HTTP/1.1 server on loopback for the load generator's HTTP client and transport tests.

It plays the door at the byte level, so the tests go through the real sockets and parser:
``GET /v1/models`` lists "tiny", ``GET /health`` answers ``health`` (status, JSON), and
``POST /v1/completions`` answers ``status`` with ``body`` (chunked, each piece of ``pieces``
written and flushed on its own, so the client sees the splits). It keeps every request's JSON
body, counts the connections it accepted, and can close a connection after a number of answers
(as a server's keep-alive timeout would), in the middle of one, or on a request it has read
(a keep-alive timeout that struck as the request came).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class MockDoor:
    pieces: Sequence[bytes] = ()
    status: int = 200
    health: tuple[int, dict] = (200, {"status": "ok", "workers": 2})
    close_after: int | None = None  # answers per connection, then the server closes it
    cut_after_pieces: int | None = None  # close mid-answer after this many pieces
    hang_up_on: int | None = None  # the n-th request of a connection: read, then closed unanswered
    seen: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> MockDoor:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.create_task(self._serve(r, w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        answered = 0
        try:
            while self.close_after is None or answered < self.close_after:
                head = await r.readuntil(b"\r\n\r\n")
                method, path, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await r.readexactly(length) if length else b""
                self.paths.append(f"{method} {path}")
                if self.hang_up_on == answered + 1:
                    return
                if path == "/v1/models":
                    await self._json(w, 200, {"data": [{"id": "tiny", "max_model_len": 2048}]})
                elif path == "/health":
                    await self._json(w, *self.health)
                elif not await self._stream(w, json.loads(body)):
                    return
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def _json(self, w: asyncio.StreamWriter, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        w.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(data), data)
        )
        await w.drain()

    async def _stream(self, w: asyncio.StreamWriter, body: dict) -> bool:
        """One completion answer; False when it was cut (the connection is to close)."""
        self.seen.append(body)
        w.write(
            b"HTTP/1.1 %d X\r\ncontent-type: text/event-stream\r\nx-request-id: srv-1\r\n"
            b"transfer-encoding: chunked\r\n\r\n" % self.status
        )
        for k, piece in enumerate(self.pieces):
            if self.cut_after_pieces is not None and k >= self.cut_after_pieces:
                await w.drain()
                return False
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await w.drain()
            await asyncio.sleep(0.001)  # its own read on the client's side
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True


def split(data: bytes, size: int) -> list[bytes]:
    return [data[k : k + size] for k in range(0, len(data), size)]
