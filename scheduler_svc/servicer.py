"""gRPC adapters of the scheduler: the public FastSwitch API and the workers' StepLink stream.

Thin by design: convert the message, call the frontend, convert back. Exceptions become status
codes in one place (`status_for`), and so do faults that end a streaming request (`fault_status`):
a stream ends CANCELLED only when its client cancelled it. The public servicer is registered
with `scheduler_svc.handlers.add_fastswitch_servicer` (malformed bytes: INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc import convert
from scheduler_svc.auth import current_caller
from scheduler_svc.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SchedulerError,
    Unavailable,
)
from scheduler_svc.frontend import Frontend, RequestStream
from scheduler_svc.many import ManyCall
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.request import Fault, FinishReason, Request
from scheduler_svc.tenancy import tenant_view

log = logging.getLogger(__name__)


_STATUS: dict[type[SchedulerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Aborted: grpc.StatusCode.ABORTED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

_FAULT: dict[Fault, type[SchedulerError]] = {
    Fault.UNAVAILABLE: Unavailable,
    Fault.ABORTED: Aborted,
}


# Every reason a Generate or Chat call can be refused with (the requests_rejected_total label).
REJECT_REASONS = tuple(code.name.lower() for code in (*_STATUS.values(), grpc.StatusCode.INTERNAL))


def status_for(err: SchedulerError) -> grpc.StatusCode:
    """The one mapping of scheduler errors to gRPC status codes (a subclass maps as its base)."""
    for cls in type(err).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


def fault_status(req: Request) -> SchedulerError | None:
    """The error a finished request's stream ends with: None when it ended normally (stop,
    length) or by its client's cancel; else Unavailable or Aborted, with its message."""
    if req.fault is None and req.finish_reason is not FinishReason.ABORTED:
        return None
    return _FAULT[req.fault or Fault.ABORTED](req.finish_message or "the request failed")


async def _chunks(stream: RequestStream) -> AsyncIterator[api.GenerateChunk]:
    """A request's chunks, the final one last; a request that a fault ended raises its
    SchedulerError after its last tokens instead of a final chunk."""
    while True:
        delta = await stream.next_delta()
        failed = fault_status(stream.request) if delta.finished else None
        if failed is None:
            yield convert.chunk(stream.request, delta)
            if delta.finished:
                return
            continue
        if delta.token_ids or delta.text:
            yield convert.chunk(stream.request, delta._replace(finished=False))
        raise failed


class FastSwitchServicer(api_grpc.FastSwitchServicer):
    def __init__(self, frontend: Frontend, metrics: SchedulerMetrics, *, policy: str, mode: str):
        self._frontend = frontend
        self._metrics = metrics
        self._policy = policy
        self._mode = mode

    async def Generate(
        self, request: api.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.GenerateChunk]:
        try:
            stream = await self._open(request)
        except SchedulerError as err:
            await self._reject(context, err)
        async for chunk in self._stream(stream, context):
            yield chunk

    async def _open(self, request: api.GenerateRequest) -> RequestStream:
        new = convert.new_request(request)
        new = replace(new, tenant=current_caller().tenant(request.tenant))
        return await self._frontend.open(new)

    async def _reject(self, context: grpc.aio.ServicerContext, err: SchedulerError) -> None:
        """Refuses a Generate or Chat call: counted by status, then aborted (raises)."""
        self._on_rejected(err)
        await context.abort(status_for(err), str(err))

    async def _stream(
        self, stream: RequestStream, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.GenerateChunk]:
        """The request's chunks; one that a fault ended (shutdown, a worker's error) ends its
        call with that status and message after its last tokens, not with a final chunk."""
        try:
            async for chunk in _chunks(stream):
                yield chunk
        except SchedulerError as failed:
            await context.abort(status_for(failed), str(failed))
        finally:
            await self._frontend.close(stream)

    async def GenerateMany(
        self, requests: AsyncIterator[api.ManyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.ManyResponse]:
        """Generate for many tagged requests on one call (``many.py``)."""
        call = ManyCall(
            open=self._open,
            chunks=_chunks,
            close=self._frontend.close,
            code_of=status_for,
            on_rejected=self._on_rejected,
        )
        try:
            async for message in call.run(requests):
                yield message
        except SchedulerError as err:
            await context.abort(status_for(err), str(err))

    def _on_rejected(self, err: SchedulerError) -> None:
        self._metrics.on_rejected(status_for(err).name.lower())

    async def Chat(
        self, request: api.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.GenerateChunk]:
        try:
            turn = convert.new_turn(request)
            turn = replace(turn, tenant=current_caller().tenant(request.tenant))
            conv, prompt, stream = await self._frontend.open_turn(turn)
        except SchedulerError as err:
            await self._reject(context, err)
        try:
            async for chunk in self._stream(stream, context):
                chunk.conversation_id = conv.conversation_id
                yield chunk
        finally:
            self._frontend.end_turn(conv, prompt, stream.request)

    async def EndConversation(
        self, request: api.EndConversationRequest, context: grpc.aio.ServicerContext
    ) -> api.EndConversationResponse:
        try:
            tenant = current_caller().tenant(request.tenant)
            freed = self._frontend.end_conversation(request.conversation_id, tenant)
        except SchedulerError as err:
            await context.abort(status_for(err), str(err))
        return api.EndConversationResponse(freed_blocks=freed)

    async def Cancel(
        self, request: api.CancelRequest, context: grpc.aio.ServicerContext
    ) -> api.CancelResponse:
        try:
            scope = current_caller().scope(request.tenant)
            cancelled = await self._frontend.cancel(request.request_id, scope)
            return api.CancelResponse(cancelled=cancelled)
        except SchedulerError as err:
            await context.abort(status_for(err), str(err))
            raise  # pragma: no cover

    async def SetPriority(
        self, request: api.SetPriorityRequest, context: grpc.aio.ServicerContext
    ) -> api.SetPriorityResponse:
        try:
            scope = current_caller().scope(request.tenant)
            await self._frontend.set_priority(request.request_id, request.priority, scope)
        except SchedulerError as err:
            await context.abort(status_for(err), str(err))
        return api.SetPriorityResponse()

    async def GetStats(
        self, request: api.StatsRequest, context: grpc.aio.ServicerContext
    ) -> api.StatsResponse:
        stats = self._frontend.core.stats()
        scope = current_caller().stats_scope
        return convert.stats(
            stats if scope is None else tenant_view(stats, scope),
            policy=self._policy,
            mode=self._mode,
            max_model_len=self._frontend.max_model_len,
        )


class _StepStream:
    """The scheduler's end of one worker's Connect stream (a ``StepChannel``): plans out,
    results in, each result checked to answer the oldest plan unanswered."""

    def __init__(self, context: grpc.aio.ServicerContext, worker_id: str) -> None:
        self._context = context
        self._worker_id = worker_id
        self._expected: deque[int] = deque()

    async def send(self, plan: StepPlan) -> None:
        await self._context.write(wk.SchedulerMessage(plan=convert.plan_to_proto(plan)))
        self._expected.append(plan.step_id)

    async def receive(self) -> StepOutput:
        msg = await self._context.read()
        if msg is grpc.aio.EOF or not msg.HasField("result"):
            raise ConnectionResetError(f"worker {self._worker_id} closed its stream")
        out = convert.output_from_proto(msg.result)
        expected = self._expected.popleft() if self._expected else None
        if out.step_id != expected:
            raise ConnectionResetError(
                f"worker {self._worker_id} answered step {out.step_id}, expected {expected}"
            )
        return out


class StepLinkServicer(wk_grpc.StepLinkServicer):
    """Each worker opens one Connect stream: hello, then plans → results, in order (with
    asynchronous scheduling a plan ahead is sent before the result of the one running)."""

    def __init__(self, frontend: Frontend, *, model_fingerprint: str) -> None:
        self._frontend = frontend
        self._fingerprint = model_fingerprint

    async def Connect(
        self, request_iterator: AsyncIterator[wk.WorkerMessage], context: grpc.aio.ServicerContext
    ) -> None:
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be a hello")
        hello = first.hello
        if hello.model_fingerprint != self._fingerprint:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker {hello.worker_id!r} serves model {hello.model_fingerprint[:12]}, "
                f"the scheduler {self._fingerprint[:12]}",
            )
        info = convert.worker_info(hello)

        channel = _StepStream(context, info.worker_id)

        async def joined() -> None:
            await context.write(wk.SchedulerMessage(accepted=wk.Accepted(worker_id=info.worker_id)))

        try:
            await self._frontend.worker_session(info, channel, joined)
        except SchedulerError as err:
            await context.abort(status_for(err), str(err))
        except ConnectionResetError as err:
            log.warning("worker stream ended", extra={"worker": info.worker_id, "why": str(err)})
            return
        await context.write(wk.SchedulerMessage(goodbye=wk.Goodbye(reason="shutting down")))
