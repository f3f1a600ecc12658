"""Server-sent events that end their request when the client leaves.

Uvicorn (ASGI spec 2.3+) tells an application that its client left only through ``receive``;
Starlette's ``StreamingResponse`` does not listen there, so a client that leaves while its request
waits in the queue would go unnoticed until the first token. :class:`EventStream` listens for
``http.disconnect`` beside the stream and calls ``on_disconnect`` at once (the door cancels the
scheduler call, which frees the request's blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event of a JSON payload (compact, UTF-8: no ``\\u`` escapes)."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + (b"\n\n")
    )


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class EventStream(Response):
    """A ``text/event-stream`` response of ``events``; ``on_disconnect`` when the client left."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_disconnect: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._events = events
        self._on_disconnect = on_disconnect
        self.status_code = 200
        self.background = None
        self.init_headers(
            {"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})}
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.create_task(_wait_disconnect(receive))
        watcher.add_done_callback(lambda t: t.cancelled() or self._on_disconnect())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            ended = False
            async for chunk in self._events:
                if watcher.done():
                    break
                ended = chunk.endswith(DONE)  # the last write also ends the body: one send less
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
                if ended:
                    break
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self._on_disconnect()  # the transport broke while we wrote
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()


async def unless_disconnected(
    request: Request, work: Awaitable[T], on_disconnect: Callable[[], None]
) -> T:
    """Awaits ``work``; if the client leaves first, calls ``on_disconnect``, cancels ``work``
    and raises ``ClientGone``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        on_disconnect()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientGone()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if not task.done():
            task.cancel()


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""
