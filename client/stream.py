"""One streamed completion (``Generate`` or ``Chat``) as an async iterator of typed chunks.

The RPC starts on the first ``__anext__`` and carries the whole stream's deadline. Leaving the
stream early -- ``break`` out of ``async for``, an exception, ``aclose()``/``cancel()``, or the
stream object being dropped -- cancels the RPC, and the server then cancels the request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from client.errors import Cancelled, InternalError, from_rpc_error
from client.results import FinishReason, GenerationChunk, GenerationResult, RequestMetrics
from proto import scheduler_pb2 as pb

StartCall = Callable[[], Any]  # returns a started grpc.aio.UnaryStreamCall


class GenerationStream:
    """Async iterator of :class:`GenerationChunk`; also an async context manager.

    ``async with`` (or a ``finally: await stream.aclose()``) cancels the RPC if the stream did not
    run to its final chunk. After :meth:`cancel`, a pending or later ``__anext__`` raises
    :class:`~client.errors.Cancelled`.
    """

    def __init__(
        self,
        start: StartCall,
        *,
        on_chunk: Callable[[GenerationChunk], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._start = start
        self._on_chunk = on_chunk
        self._on_close = on_close
        self._call: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._final = False
        self._closed = False
        self._cancelled = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        msg = await self.read_message()
        if msg is None:
            raise StopAsyncIteration
        chunk = GenerationChunk.from_proto(msg)
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        return chunk

    async def read_message(self) -> pb.GenerateChunk | None:
        """The next chunk as the scheduler's message, None after the final one: what
        ``__anext__`` reads, without building a :class:`GenerationChunk` (the HTTP door turns
        every message of every stream straight into bytes). Errors as ``__anext__``; not for
        a stream with ``on_chunk``."""
        if self._cancelled:
            raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
        if self._closed:
            return None
        if self._call is None:
            self._loop = asyncio.get_running_loop()
            self._call = self._start()
        try:
            msg = await self._call.read()
        except grpc.aio.AioRpcError as err:
            self._close()
            raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            if task_is_cancelling():
                self._cancel_call()  # the reading task was cancelled: the request goes with it
                raise
            self._close()  # cancel() on this stream, or the client's channel was closed
            raise Cancelled(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
        if msg is grpc.aio.EOF:
            self._close()
            if not self._final:
                raise InternalError(grpc.StatusCode.INTERNAL, "stream ended without a final chunk")
            return None
        if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self._final = True
        return msg  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Cancels the RPC (and so the request on the server) unless it already finished."""
        if not self._closed:
            self._cancelled = True
            self._cancel_call()

    async def aclose(self) -> None:
        """Ends the stream; cancels the RPC if the final chunk has not been read yet."""
        if not self._closed:
            self._cancel_call()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._closed:
            return
        loop, call = self._loop, self._call
        if call is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(call.cancel)
        self._close()

    def _cancel_call(self) -> None:
        if self._call is not None and not self._final:
            self._call.cancel()
        self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


def task_is_cancelling() -> bool:
    """Whether the running task is being cancelled (else a CancelledError came from gRPC: the call
    itself was cancelled, e.g. by closing the channel)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def collect(stream: GenerationStream, *, request_id: str) -> GenerationResult:
    """Reads a stream to its end and assembles the result, timing tokens as the client sees them.

    ``request_id`` is used when the server never names the request (it always should).
    """
    t0 = time.perf_counter()
    token_ids: list[int] = []
    texts: list[str] = []
    gaps: list[float] = []
    first_token_s: float | None = None
    last_s = t0
    last: GenerationChunk | None = None
    conversation_id: str | None = None
    async with stream:
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.token_ids:
                if first_token_s is None:
                    first_token_s = now - t0
                    gaps.extend([0.0] * (len(chunk.token_ids) - 1))
                else:
                    share = (now - last_s) / len(chunk.token_ids)
                    gaps.extend([share] * len(chunk.token_ids))
                last_s = now
                token_ids.extend(chunk.token_ids)
            texts.append(chunk.text)
            request_id = chunk.request_id or request_id
            conversation_id = chunk.conversation_id or conversation_id
            last = chunk
    if last is None or last.finish_reason is None:  # collect() never sees an early stop
        raise InternalError(grpc.StatusCode.INTERNAL, "stream ended without a final chunk")
    return GenerationResult(
        request_id=request_id,
        token_ids=tuple(token_ids),
        text="".join(texts),
        finish_reason=FinishReason(last.finish_reason),
        metrics=last.metrics if last.metrics is not None else RequestMetrics(),
        worker_id=last.worker_id,
        conversation_id=conversation_id,
        client_ttft_s=first_token_s,
        client_tbt_s=tuple(gaps),
        client_e2e_s=time.perf_counter() - t0,
    )
