"""Many completions of one client on one ``GenerateMany`` call (``AsyncClient(multiplex=True)``).

For a client that keeps many streams open at once, a front door above all: one Generate call per
stream costs a gRPC read, an HTTP/2 frame and a poller wake-up per stream per step on both
sides, and on a busy machine that CPU is latency. Multiplexed, a step of 64 streams is one
message (the scheduler side is ``scheduler_svc/many.py``).

* :class:`Multiplexer` holds the call (opened on the first stream's first read, opened again
  after it ended), a writer task that sends the ``ManyRequest`` messages in order, and a
  reader task that hands each ``TaggedChunk`` to its stream's queue. Tags are never reused.
* :class:`MuxStream` is a :class:`~client.stream.GenerationStream` read from that queue: the
  same chunks, the same errors (a tag's status becomes the typed exception of
  :mod:`client.errors`), the same rules for leaving early (its request is cancelled: a
  ``cancel`` message for its tag). Its deadline is its own (the call has none).
* When the call fails (the scheduler restarts, the channel closes), every stream open on it
  fails with that error, as their own calls would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc

from client.errors import (
    Cancelled,
    DeadlineExceeded,
    FastSwitchError,
    InternalError,
    error_for,
    from_rpc_error,
)
from client.stream import GenerationStream, task_is_cancelling
from proto import scheduler_pb2 as pb

_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Multiplexer:
    """The GenerateMany call of one client; ``start`` opens a new call (a stream-stream
    call of the stub, with the client's metadata)."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self._call: Any = None
        self._outgoing: asyncio.Queue[pb.ManyRequest] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: dict[int, MuxStream] = {}
        self._next_tag = 0

    def begin(self, stream: MuxStream, request: pb.GenerateRequest) -> int:
        """Sends `request` for `stream`; its tag."""
        self._ensure_call()
        self._next_tag += 1
        tag = self._next_tag
        self._streams[tag] = stream
        self._outgoing.put_nowait(pb.ManyRequest(tag=tag, generate=request))
        return tag

    def cancel(self, tag: int) -> None:
        """Ends the request of `tag` early (nothing more of it is delivered)."""
        if self._streams.pop(tag, None) is not None and self._call is not None:
            self._outgoing.put_nowait(pb.ManyRequest(tag=tag, cancel=pb.ManyRequest.Cancel()))

    def forget(self, tag: int) -> None:
        """`tag`'s request has finished: its stream leaves the table."""
        self._streams.pop(tag, None)

    async def aclose(self) -> None:
        """Cancels the call and its tasks; streams still open fail with Cancelled."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(Cancelled(grpc.StatusCode.CANCELLED, "the client was closed"), at_once=True)

    # ------------------------------------------------------------------ private

    def _ensure_call(self) -> None:
        if self._call is not None:
            return
        self._call = call = self._start()
        self._outgoing = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._write(call, self._outgoing)),
            asyncio.create_task(self._read(call)),
        ]

    async def _write(self, call: Any, outgoing: asyncio.Queue[pb.ManyRequest]) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:  # a failed write ends the call: its reader reports why
                await call.write(await outgoing.get())

    async def _read(self, call: Any) -> None:
        err: FastSwitchError
        try:
            while (msg := await call.read()) is not grpc.aio.EOF:
                for tagged in msg.chunks:
                    stream = self._streams.get(tagged.tag)
                    if stream is not None:
                        stream.deliver(tagged)
            err = InternalError(grpc.StatusCode.INTERNAL, "the scheduler ended the call early")
        except grpc.aio.AioRpcError as rpc_error:
            err = from_rpc_error(rpc_error)
        except asyncio.CancelledError:
            if task_is_cancelling():
                raise
            err = Cancelled(grpc.StatusCode.CANCELLED, "the call was cancelled")
        if self._call is call:  # a later stream opens a new call
            self._call = None
            self._fail_all(err)

    def _fail_all(self, err: FastSwitchError, *, at_once: bool = False) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.deliver(err, at_once=at_once)


class MuxStream(GenerationStream):
    """One completion on the client's GenerateMany call; see the module docstring."""

    def __init__(
        self, mux: Multiplexer, request: pb.GenerateRequest, deadline_s: float | None
    ) -> None:
        super().__init__(_no_call)  # read_message below never starts a call of its own
        self._mux = mux
        self._request = request
        self._timeout_s = deadline_s
        self._deadline: float | None = None
        self._tag: int | None = None
        self._queue: asyncio.Queue[pb.TaggedChunk | FastSwitchError] = asyncio.Queue()

    def deliver(self, item: pb.TaggedChunk | FastSwitchError, *, at_once: bool = False) -> None:
        """Called by the multiplexer: the next chunk, status or call error; ``at_once`` drops
        what was not read yet (the client closed: a read raises now, as on a call of its own)."""
        if at_once:
            self._queue = asyncio.Queue()
        self._queue.put_nowait(item)

    async def read_message(self) -> pb.GenerateChunk | None:
        if self._cancelled:
            raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
        if self._closed:
            return None
        loop = asyncio.get_running_loop()
        if self._tag is None:
            self._loop = loop
            if self._timeout_s is not None:
                self._deadline = loop.time() + self._timeout_s
            self._tag = self._mux.begin(self, self._request)
        try:
            async with asyncio.timeout_at(self._deadline):
                item = await self._queue.get()
        except TimeoutError:
            self._cancel_call()
            raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
        except asyncio.CancelledError:
            self._cancel_call()  # the reading task was cancelled: the request goes with it
            raise
        if isinstance(item, FastSwitchError):
            self._close()
            raise item
        if item.code:
            self._close()
            self._mux.forget(item.tag)
            raise error_for(_CODES.get(item.code, grpc.StatusCode.UNKNOWN), item.message)
        msg = item.chunk
        if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self._final = True
            self._mux.forget(item.tag)
            self._close()
        return msg

    def __del__(self) -> None:
        if self._closed or self._tag is None:
            return
        loop, tag = self._loop, self._tag
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._mux.cancel, tag)
        self._close()

    def _cancel_call(self) -> None:
        if self._tag is not None and not self._final:
            self._mux.cancel(self._tag)
        self._close()


def _no_call() -> None:
    raise AssertionError("a MuxStream reads its multiplexer, not a call of its own")
