"""One ``GenerateMany`` call: many tagged Generate requests multiplexed on one gRPC stream.

A front door that serves many clients (the HTTP door) would otherwise hold one Generate call per
client and receive one message per stream per step: at 64 streams, 64 reads, 64 HTTP/2 frames
and 64 wake-ups of gRPC's poller for each step on both sides. On one GenerateMany call every
chunk ready at once goes out as one ``ManyResponse``::

    caller ── ManyRequest(tag, generate | cancel | batch) ──▶ reader task: open / cancel
                                                                 │ one pump task per open request
    caller ◀── ManyResponse(chunks=[...]) ── run() ◀── outbox (every chunk ready, in order)

* A request is what Generate would make of the same GenerateRequest: same validation, tenant
  (the caller's key narrows it), fairness, stop strings and metrics. Its chunks are Generate's;
  where Generate's call would end with a status (a refusal, a fault), its tag gets one
  TaggedChunk with that code and message, and the call goes on for the others.
* A message may carry a batch of such operations instead of one (what the caller had queued
  when it wrote): each is handled in order, as if it had come alone.
* A cancel ends the request as leaving its Generate call does (it is cancelled and freed); no
  chunk of it is sent after the cancel is read, so the caller may reuse the tag at once.
* The caller's half-close ends the call once every open request has finished; the call's
  end (the caller left, or the scheduler stopped) closes every request still open.
* The call itself fails only when a message is malformed or names no operation (the
  SchedulerError raised by ``requests``, or InvalidArgument here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from proto import scheduler_pb2 as api
from scheduler_svc.errors import InvalidArgument, ResourceExhausted, SchedulerError
from scheduler_svc.frontend import RequestStream

MAX_OPEN = 4096  # requests open on one call at a time

Open = Callable[[api.GenerateRequest], Awaitable[RequestStream]]
Chunks = Callable[[RequestStream], AsyncIterator[api.GenerateChunk]]


class ManyCall:
    """The tasks and the outbox of one call. ``open`` starts a request as Generate does,
    ``chunks`` reads its chunks (raising its fault's SchedulerError), ``close`` ends a stream
    (cancelling a live request), ``code_of`` maps an error to its status, and ``on_rejected``
    counts a request refused at its start."""

    def __init__(
        self,
        *,
        open: Open,
        chunks: Chunks,
        close: Callable[[RequestStream], Awaitable[None]],
        code_of: Callable[[SchedulerError], grpc.StatusCode],
        on_rejected: Callable[[SchedulerError], None],
        max_open: int = MAX_OPEN,
    ) -> None:
        self._open = open
        self._chunks = chunks
        self._close = close
        self._code_of = code_of
        self._on_rejected = on_rejected
        self._max_open = max_open
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[api.TaggedChunk] = []
        self._ready = asyncio.Event()

    async def run(
        self, requests: AsyncIterator[api.ManyRequest]
    ) -> AsyncIterator[api.ManyResponse]:
        """The call's messages, each holding every chunk that was ready; raises the error that
        ends the whole call (a malformed message)."""
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                failed = reader.exception() if reader.done() else None
                if failed is not None:
                    raise failed
                if self._outbox:
                    batch, self._outbox = self._outbox, []
                    yield api.ManyResponse(chunks=batch)
                if reader.done() and not self._pumps and not self._outbox:
                    return
        finally:
            tasks = [reader, *self._pumps.values()]
            self._pumps.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ private

    async def _read(self, requests: AsyncIterator[api.ManyRequest]) -> None:
        try:
            async for msg in requests:
                if not msg.batch:
                    await self._handle(msg)
                    continue
                if msg.HasField("op"):
                    raise InvalidArgument("a message with a batch carries no operation of its own")
                for op in msg.batch:
                    if op.batch:
                        raise InvalidArgument("a batch holds no batch")
                    await self._handle(op)
        finally:
            self._ready.set()

    async def _handle(self, msg: api.ManyRequest) -> None:
        match msg.WhichOneof("op"):
            case "generate":
                await self._start(msg.tag, msg.generate)
            case "cancel":
                self._cancel(msg.tag)
            case _:
                raise InvalidArgument(f"request tag {msg.tag} names no operation")

    async def _start(self, tag: int, request: api.GenerateRequest) -> None:
        if tag in self._pumps:
            self._fail(tag, InvalidArgument(f"tag {tag} is in use by an open request"))
            return
        try:
            if len(self._pumps) >= self._max_open:
                raise ResourceExhausted(f"at most {self._max_open} requests open on one call")
            stream = await self._open(request)
        except SchedulerError as err:
            self._on_rejected(err)
            self._fail(tag, err)
            return
        self._pumps[tag] = asyncio.create_task(self._pump(tag, stream))

    def _cancel(self, tag: int) -> None:
        task = self._pumps.pop(tag, None)
        if task is not None:
            task.cancel()
            self._outbox = [c for c in self._outbox if c.tag != tag]

    async def _pump(self, tag: int, stream: RequestStream) -> None:
        try:
            async for chunk in self._chunks(stream):
                self._put(api.TaggedChunk(tag=tag, chunk=chunk))
        except SchedulerError as err:
            self._fail(tag, err)
        finally:
            if self._pumps.get(tag) is asyncio.current_task():
                del self._pumps[tag]
            self._ready.set()
            await self._close(stream)

    def _fail(self, tag: int, err: SchedulerError) -> None:
        code = self._code_of(err).value[0]
        self._put(api.TaggedChunk(tag=tag, code=code, message=str(err)))

    def _put(self, chunk: api.TaggedChunk) -> None:
        self._outbox.append(chunk)
        self._ready.set()
