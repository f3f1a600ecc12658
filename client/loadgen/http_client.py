"""A lean HTTP/1.1 client for the load generator: asyncio protocols, httptools' parser, keep-alive.

The bench client must cost little next to what it measures. Through httpx a streamed completion
of 64 tokens cost the bench about 3-7 ms of CPU per request (its connection pool, its anyio
streams and its byte iterators per chunk), more than the HTTP door's own work, and on a 2-core
machine that CPU is taken from the server under test. This client does only what the bench
needs: one request at a time per connection, ``Content-Length`` bodies out, chunked or
``Content-Length`` bodies in (parsed by httptools, the C parser uvicorn uses), each body piece
handed to the reader as it arrives; about 0.6 ms per such request, most of it the JSON of the
events.

* :class:`HttpClient` keeps idle keep-alive connections to one origin (``http://`` or
  ``https://``, then ``ssl``) and at most ``max_connections`` open (None: no cap).
  ``request`` is an async context manager yielding a :class:`Response` once its head has come.
* A connection goes back to the pool only when its response was read to the end and both sides
  keep it alive; one left early (an error, a timeout, a cancel) is closed, so a late piece of
  an old answer is never read as part of a new one.
* A connection the server closed while idle is dropped when it reports the close; one closed
  in the moment between that and a reuse (before any byte of the answer came) is retried once
  on a fresh connection.
* Failures to connect, protocol errors and a connection lost mid-answer raise
  :class:`HttpError`. Timeouts are the caller's (``asyncio.timeout`` around the call), but for
  the connect timeout, which raises ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

_PAUSE_BYTES = 256 * 1024  # unread body past this: stop reading the socket until it drains


class HttpError(Exception):
    """A connection or protocol failure (no HTTP status to report)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: httptools' callbacks fill the current response's state."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.complete = False
        self.received = False  # any byte of the current answer
        self.keep_alive = False
        self.closed = False
        self.error: HttpError | None = None

    # ------------------------------------------------------------ asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances, but have its methods
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._parser is None:
            self._fail(HttpError("the server sent bytes nobody asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the server switched protocols"))
        except httptools.HttpParserError as err:
            self._fail(HttpError(f"malformed HTTP answer: {err}"))

    def eof_received(self) -> bool | None:
        if self._parser is not None and not self.complete:
            with contextlib.suppress(httptools.HttpParserError):  # a body that ends with the close
                self._parser.feed_data(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and not self.complete:
            why = f": {exc}" if exc else ""
            self._fail(HttpError(f"the server closed the connection mid-answer{why}"))

    # ------------------------------------------------------------ httptools' side

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None and self._head is not None
        self.status = self._parser.get_status_code()
        if not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._buffered += len(body)
        if self._buffered > _PAUSE_BYTES and not self._paused and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake.set()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake.set()

    # ------------------------------------------------------------ the client's side

    def send(self, head: bytes, body: bytes) -> None:
        """Starts a new exchange: the request goes out, a fresh parser waits for its answer."""
        assert self._transport is not None
        if self.closed:  # closed since it was taken: its close was reported already
            raise HttpError("the server closed the connection")
        self._parser = httptools.HttpResponseParser(self)
        self._head = asyncio.get_running_loop().create_future()
        self._pieces.clear()
        self._buffered = 0
        self._raw_headers = []
        self.status = 0
        self.complete = self.received = False
        self.keep_alive = False
        self.error = None
        self._transport.write(head + body)

    async def head(self) -> None:
        assert self._head is not None
        await self._head

    def headers(self) -> dict[str, str]:
        return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in self._raw_headers}

    async def next_piece(self) -> bytes | None:
        """The next piece of the body as it came (None: the body is complete)."""
        while not self._pieces:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self._wake.clear()
            await self._wake.wait()
        piece = self._pieces.popleft()
        self._buffered -= len(piece)
        if self._paused and self._buffered <= _PAUSE_BYTES // 2 and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        return piece

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _fail(self, err: HttpError) -> None:
        if self.error is None:
            self.error = err
        if self._head is not None and not self._head.done():
            self._head.set_exception(err)
            self._head.exception()  # retrieved: a caller that left never sees it logged
        self._wake.set()
        if self._transport is not None:
            self._transport.close()


class Response:
    """A response whose head has come; its body is read with :meth:`pieces` or :meth:`read`."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers()

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (chunk boundaries are the network's, not events')."""
        while (piece := await self._conn.next_piece()) is not None:
            yield piece

    async def read(self) -> bytes:
        return b"".join([p async for p in self.pieces()])


class HttpClient:
    """Keep-alive connections to one origin; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int | None = None,
        connect_timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        tls = parts.scheme == "https"
        self._ssl = (ssl or ssl_module.create_default_context()) if tls else None
        self._prefix = parts.path.rstrip("/")
        host = self._host if ":" not in self._host else f"[{self._host}]"
        default_port = self._port == (443 if self._ssl else 80)
        fixed = {"host": host if default_port else f"{host}:{self._port}", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._closed = False

    @asynccontextmanager
    async def request(
        self, method: str, path: str, *, json_body: Any = None
    ) -> AsyncIterator[Response]:
        """Sends one request and yields its response once the head has come; the body is read
        inside the block. Leaving the block early closes the connection."""
        body = b"" if json_body is None else json.dumps(json_body).encode()
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("latin-1") + self._fixed
        if json_body is not None:
            head += b"content-type: application/json\r\n"
        head += b"content-length: %d\r\n\r\n" % len(body)
        if self._slots is not None:
            await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = await self._exchange(head, body)
            yield Response(conn)
        finally:  # a connection left before the answer's end is closed, not pooled
            if conn is not None:
                self._release(conn)
            if self._slots is not None:
                self._slots.release()

    async def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: the status and the whole body."""
        async with self.request("GET", path) as resp:
            return resp.status, await resp.read()

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    # ------------------------------------------------------------------ private

    async def _exchange(self, head: bytes, body: bytes) -> _Connection:
        """A connection that has sent the request and received the answer's head."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        reused = self._take_idle()
        conn = reused or await self._connect()
        while True:
            try:
                conn.send(head, body)
                await conn.head()
                return conn
            except HttpError:
                self._drop(conn)
                if reused is None or conn.received:
                    raise
            except BaseException:  # a cancel or timeout mid-exchange: the connection goes too
                self._drop(conn)
                raise
            # the server closed the idle one as we took it: once more, on a fresh connection
            reused = None
            conn = await self._connect()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
            self._open.discard(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise TimeoutError(
                f"no connection to {self._host}:{self._port} within {self._connect_timeout_s:g} s"
            ) from None
        except (OSError, ssl_module.SSLError) as err:
            raise HttpError(f"cannot connect to {self._host}:{self._port}: {err}") from None
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable() and not self._closed:
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)
