"""Many completions of one client on one ``GenerateMany`` call (``AsyncClient(multiplex=True)``).

For a client that keeps many streams open at once, a front door above all: one Generate call per
stream costs a gRPC read, an HTTP/2 frame and a poller wake-up per stream per step on both
sides, and on a busy machine that CPU is latency. Multiplexed, a step of 64 streams is one
message (the scheduler side is ``scheduler_svc/many.py``).

* :class:`Multiplexer` holds the call (opened on the first stream's first read, opened again
  after it ended), a writer task that sends the ``ManyRequest`` messages in order -- every
  one queued while the last write was under way goes in one message (a ``batch``), since a
  gRPC write costs a poller round trip whatever it holds -- and a reader task that hands each
  ``TaggedChunk`` to its stream. Tags are never reused.
* :class:`MuxStream` is a :class:`~client.stream.GenerationStream` read from what the reader
  handed it (a deque; the reader wakes the stream only when it waits for more): the same
  chunks, the same errors (a tag's status becomes the typed exception of
  :mod:`client.errors`), the same rules for leaving early (its request is cancelled: a
  ``cancel`` message for its tag). Its deadline is its own (the call has none): one timer,
  set when it starts, that fails a read waiting past it.
* When the call fails (the scheduler restarts, the channel closes), every stream open on it
  fails with that error, as their own calls would have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
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
        self._outgoing = _Outgoing()
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: dict[int, MuxStream] = {}
        self._next_tag = 0

    def begin(self, stream: MuxStream, request: pb.GenerateRequest) -> int:
        """Sends `request` for `stream`; its tag."""
        self._ensure_call()
        self._next_tag += 1
        tag = self._next_tag
        self._streams[tag] = stream
        self._outgoing.put(pb.ManyRequest(tag=tag, generate=request))
        return tag

    def cancel(self, tag: int) -> None:
        """Ends the request of `tag` early (nothing more of it is delivered)."""
        if self._streams.pop(tag, None) is not None and self._call is not None:
            self._outgoing.put(pb.ManyRequest(tag=tag, cancel=pb.ManyRequest.Cancel()))

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
        self._outgoing = _Outgoing()
        self._tasks = [
            asyncio.create_task(self._write(call, self._outgoing)),
            asyncio.create_task(self._read(call)),
        ]

    async def _write(self, call: Any, outgoing: _Outgoing) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:  # a failed write ends the call: its reader reports why
                await call.write(await outgoing.take())

    async def _read(self, call: Any) -> None:
        err: FastSwitchError
        try:
            while (msg := await call.read()) is not grpc.aio.EOF:
                streams = self._streams
                for tagged in msg.chunks:
                    stream = streams.get(tagged.tag)
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


class _Outgoing:
    """The messages of one call not written yet; :meth:`take` waits for at least one and
    returns all of them as one message."""

    def __init__(self) -> None:
        self._queued: list[pb.ManyRequest] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, msg: pb.ManyRequest) -> None:
        self._queued.append(msg)
        waiter, self._waiter = self._waiter, None
        _wake(waiter)

    async def take(self) -> pb.ManyRequest:
        while not self._queued:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        queued, self._queued = self._queued, []
        return queued[0] if len(queued) == 1 else pb.ManyRequest(batch=queued)


class MuxStream(GenerationStream):
    """One completion on the client's GenerateMany call; see the module docstring."""

    def __init__(
        self, mux: Multiplexer, request: pb.GenerateRequest, deadline_s: float | None
    ) -> None:
        super().__init__(_no_call)  # read_message below never starts a call of its own
        self._mux = mux
        self._request = request
        self._timeout_s = deadline_s
        self._tag: int | None = None
        self._items: deque[pb.TaggedChunk | FastSwitchError] = deque()
        self._waiter: asyncio.Future[None] | None = None  # set while a read waits
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    def deliver(self, item: pb.TaggedChunk | FastSwitchError, *, at_once: bool = False) -> None:
        """Called by the multiplexer: the next chunk, status or call error; ``at_once`` drops
        what was not read yet (the client closed: a read raises now, as on a call of its own)."""
        if at_once:
            self._items.clear()
        self._items.append(item)
        self._wake_reader()

    async def read_message(self) -> pb.GenerateChunk | None:
        if self._cancelled:
            raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
        if self._closed:
            return None
        if self._tag is None:
            self._begin()
        items = self._items
        if not items:
            await self._wait()
        item = items.popleft()
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

    # ------------------------------------------------------------------ private

    def _begin(self) -> None:
        """The first read: the request goes out and the deadline's timer starts."""
        self._loop = loop = asyncio.get_running_loop()
        if self._timeout_s is not None:
            self._timer = loop.call_at(loop.time() + self._timeout_s, self._expire)
        self._tag = self._mux.begin(self, self._request)

    async def _wait(self) -> None:
        """Until something is delivered; raises what ends the stream meanwhile (its deadline,
        :meth:`cancel`, the reading task's cancellation)."""
        while not self._items:
            if self._expired:
                self._cancel_call()
                raise DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            if self._closed:
                raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
            assert self._loop is not None
            self._waiter = waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self._waiter = None
                self._cancel_call()  # the reading task was cancelled: the request goes with it
                raise

    def _expire(self) -> None:
        """The deadline's timer: a read waiting now (or later, with nothing delivered) fails."""
        self._timer = None
        self._expired = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter, self._waiter = self._waiter, None
        _wake(waiter)

    def _cancel_call(self) -> None:
        if self._tag is not None and not self._final:
            self._mux.cancel(self._tag)
        self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super()._close()
        self._wake_reader()  # a read waiting on a stream closed from elsewhere raises Cancelled


def _wake(waiter: asyncio.Future[None] | None) -> None:
    """Resolves the future a reader waits on, if one does."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _no_call() -> None:
    raise AssertionError("a MuxStream reads its multiplexer, not a call of its own")
