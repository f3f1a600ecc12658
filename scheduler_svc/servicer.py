"""gRPC adapters of the scheduler: the public FastSwitch API and the workers' StepLink stream.

Thin by design: convert the message, call the frontend, convert back. Exceptions become status
codes in one place (`_status_for`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc import convert
from scheduler_svc.conversations import ConversationBusy
from scheduler_svc.core import CapacityError, SchedulingError
from scheduler_svc.frontend import Frontend, RequestStream
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.plan import StepOutput, StepPlan

log = logging.getLogger(__name__)


def _status_for(err: Exception) -> grpc.StatusCode:
    if isinstance(err, CapacityError | OverflowError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(err, ConversationBusy):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, ValueError | SchedulingError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, KeyError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, ConnectionError):
        return grpc.StatusCode.UNAVAILABLE
    raise err


_ERRORS = (ValueError, SchedulingError, KeyError, ConnectionError, OverflowError, ConversationBusy)


def _message(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"not found: {err.args[0]}"
    return str(err)


class TextDelta:
    """Incremental detokenization: text is released once it no longer ends mid-character."""

    def __init__(self, frontend: Frontend) -> None:
        self._tokenizer = frontend.tokenizer
        self._sent = 0

    def next(self, req_output: list[int], final: bool) -> str:
        try:
            text = self._tokenizer.decode(req_output)
        except ValueError:
            return ""
        if text.endswith("\ufffd") and not final:
            return ""
        delta, self._sent = text[self._sent :], len(text)
        return delta


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
            stream = await self._frontend.open(convert.new_request(request))
        except _ERRORS as err:
            await context.abort(_status_for(err), _message(err))
        async for chunk in self._stream(stream):
            yield chunk

    async def _stream(self, stream: RequestStream) -> AsyncIterator[api.GenerateChunk]:
        req = stream.request
        text = TextDelta(self._frontend)
        try:
            while True:
                events = [await stream.next(), *stream.drain_ready()]
                finished = any(e.finished for e in events)
                tokens = [t for e in events for t in e.token_ids]
                chunk = api.GenerateChunk(
                    request_id=req.request_id,
                    token_ids=tokens,
                    text=text.next(req.output_ids, finished),
                    worker_id=req.worker_id or "",
                )
                if finished:
                    if req.finish_reason is not None:
                        chunk.finish_reason = convert.FINISH[req.finish_reason]
                    chunk.metrics.CopyFrom(convert.metrics(req))
                    self._metrics.on_finish(req)
                yield chunk
                if finished:
                    return
        finally:
            await self._frontend.close(stream)

    async def Chat(
        self, request: api.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.GenerateChunk]:
        try:
            conv, prompt, stream = await self._frontend.open_turn(convert.new_turn(request))
        except _ERRORS as err:
            await context.abort(_status_for(err), _message(err))
        try:
            async for chunk in self._stream(stream):
                chunk.conversation_id = conv.conversation_id
                yield chunk
        finally:
            self._frontend.end_turn(conv, prompt, stream.request)

    async def EndConversation(
        self, request: api.EndConversationRequest, context: grpc.aio.ServicerContext
    ) -> api.EndConversationResponse:
        try:
            freed = self._frontend.end_conversation(request.conversation_id, request.tenant)
        except _ERRORS as err:
            await context.abort(_status_for(err), _message(err))
        return api.EndConversationResponse(freed_blocks=freed)

    async def Cancel(
        self, request: api.CancelRequest, context: grpc.aio.ServicerContext
    ) -> api.CancelResponse:
        try:
            return api.CancelResponse(cancelled=await self._frontend.cancel(request.request_id))
        except _ERRORS as err:
            await context.abort(_status_for(err), _message(err))
            raise  # pragma: no cover

    async def SetPriority(
        self, request: api.SetPriorityRequest, context: grpc.aio.ServicerContext
    ) -> api.SetPriorityResponse:
        try:
            await self._frontend.set_priority(request.request_id, request.priority)
        except _ERRORS as err:
            await context.abort(_status_for(err), _message(err))
        return api.SetPriorityResponse()

    async def GetStats(
        self, request: api.StatsRequest, context: grpc.aio.ServicerContext
    ) -> api.StatsResponse:
        core = self._frontend.core
        c = core.counters
        out = api.StatsResponse(
            waiting=core.num_waiting(),
            running=core.num_running(),
            swapped=core.num_swapped(),
            finished=c.finished,
            cancelled=c.cancelled,
            failed=c.failed,
            preemptions=c.preemptions,
            swap_outs=c.swap_outs,
            swap_ins=c.swap_ins,
            recomputes=c.recomputes,
            swap_out_bytes=c.swap_out_bytes,
            swap_in_bytes=c.swap_in_bytes,
            reuse_hit_tokens=c.reuse_hit_tokens,
            swap_bytes_avoided=c.swap_bytes_avoided,
            retained_lookups=c.retained_lookups,
            retained_hit_blocks=c.retained_hit_blocks,
            offloaded_blocks=c.offloaded_blocks,
            policy=self._policy,
            mode=self._mode,
            max_model_len=self._frontend._max_model_len,
        )
        queued = core.tenants()
        weight = getattr(core.policy, "weight", lambda _t: 1.0)
        for tenant, tally in sorted(core.tallies.items()):
            waiting, running = queued.get(tenant, (0, 0))
            out.tenants.add(
                tenant=tenant,
                virtual_counter=core.policy.counter(tenant),
                prompt_tokens=tally.prompt_tokens,
                output_tokens=tally.output_tokens,
                waiting=waiting,
                running=running,
                finished=tally.finished,
                weight=weight(tenant),
            )
        for wid, slot in sorted(core.workers.items()):
            stats = slot.allocator.stats()
            out.workers.add(
                worker_id=wid,
                device=slot.info.device,
                num_blocks=slot.info.num_blocks,
                free_blocks=stats.num_free,
                running=len(slot.running),
                steps=slot.steps,
                mean_step_s=slot.step_s_total / slot.steps if slot.steps else 0.0,
                swap_out_bytes=slot.swap_out_bytes,
                swap_in_bytes=slot.swap_in_bytes,
                largest_free_run=stats.largest_free_run,
                step_s_total=slot.step_s_total,
                idle_s_total=slot.idle_s_total,
                forward_s_total=slot.forward_s_total,
            )
        return out


class StepLinkServicer(wk_grpc.StepLinkServicer):
    """Each worker opens one Connect stream: hello, then one plan → one result, in order."""

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

        async def exchange(plan: StepPlan) -> StepOutput:
            await context.write(wk.SchedulerMessage(plan=convert.plan_to_proto(plan)))
            msg = await context.read()
            if msg is grpc.aio.EOF or not msg.HasField("result"):
                raise ConnectionResetError(f"worker {info.worker_id} closed its stream")
            out = convert.output_from_proto(msg.result)
            if out.step_id != plan.step_id:
                raise ConnectionResetError(
                    f"worker {info.worker_id} answered step {out.step_id}, expected {plan.step_id}"
                )
            return out

        async def joined() -> None:
            await context.write(wk.SchedulerMessage(accepted=wk.Accepted(worker_id=info.worker_id)))

        try:
            await self._frontend.worker_session(info, exchange, joined)
        except SchedulingError as err:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(err))
        except ConnectionResetError as err:
            log.warning("worker stream ended", extra={"worker": info.worker_id, "why": str(err)})
            return
        await context.write(wk.SchedulerMessage(goodbye=wk.Goodbye(reason="shutting down")))
