"""Conversions between proto messages and the scheduler's plain data (used by servicers only)."""

from __future__ import annotations

from collections.abc import Sequence

from proto import scheduler_pb2 as api
from proto import worker_pb2 as wk
from scheduler_svc.deltas import Delta
from scheduler_svc.fetch_cost import DeviceCosts
from scheduler_svc.frontend import NewRequest, NewTurn
from scheduler_svc.plan import StepOutput, StepPlan, SwapOrder
from scheduler_svc.request import FinishReason, Request, Sampling
from scheduler_svc.request_metrics import request_metrics
from scheduler_svc.stats import SchedulerStats, TenantStats, WorkerStats
from scheduler_svc.workers import WorkerInfo
from servekit.runs import BlockRun

FINISH = {
    FinishReason.STOP: api.FINISH_REASON_STOP,
    FinishReason.LENGTH: api.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: api.FINISH_REASON_CANCELLED,
    FinishReason.ABORTED: api.FINISH_REASON_ABORTED,
}


def _new_request(
    msg: api.GenerateRequest | api.ChatRequest,
    text: str | None,
    ids: Sequence[int] | None,
    retain_ttl_s: float | None = None,
) -> NewRequest:
    s = msg.sampling
    return NewRequest(
        prompt_text=text,
        prompt_ids=ids,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p or 1.0,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
        stop_token_ids=tuple(s.stop_token_ids),
        ignore_eos=s.ignore_eos,
        tenant=msg.tenant or "default",
        priority=msg.priority,
        request_id=msg.request_id or None,
        stop=tuple(s.stop),
        retain_ttl_s=retain_ttl_s,
    )


def new_request(msg: api.GenerateRequest) -> NewRequest:
    which = msg.WhichOneof("prompt")
    return _new_request(
        msg,
        msg.text if which == "text" else None,
        msg.token_ids.ids if which == "token_ids" else None,  # copied once its length is checked
        msg.retain_ttl_s if msg.HasField("retain_ttl_s") else None,
    )


def new_turn(msg: api.ChatRequest) -> NewTurn:
    """A chat turn; its prompt ids come from the conversation (the frontend fills them)."""
    return NewTurn(
        conversation_id=msg.conversation_id or None,
        tenant=msg.tenant or "default",
        system=msg.system or None,
        message=msg.message,
        ttl_s=msg.ttl_s or None,
        request=_new_request(msg, None, None),
    )


def metrics(req: Request) -> api.RequestMetrics:
    m = request_metrics(req)
    out = api.RequestMetrics(
        prompt_tokens=m.prompt_tokens,
        cached_prompt_tokens=m.cached_prompt_tokens,
        preemptions=m.preemptions,
        swap_outs=m.swap_outs,
        swap_ins=m.swap_ins,
        recomputes=m.recomputes,
        tbt_s=m.tbt_s,
    )
    if m.queue_s is not None:
        out.queue_s = m.queue_s
    if m.ttft_s is not None:
        out.ttft_s = m.ttft_s
    if m.e2e_s is not None:
        out.e2e_s = m.e2e_s
    return out


def chunk(req: Request, delta: Delta) -> api.GenerateChunk:
    """One streamed chunk; the last one carries the finish reason and the request's metrics."""
    out = api.GenerateChunk(
        request_id=req.request_id,
        token_ids=delta.token_ids,
        text=delta.text,
        worker_id=req.worker_id or "",
    )
    if delta.finished:
        if req.finish_reason is not None:
            out.finish_reason = FINISH[req.finish_reason]
        out.metrics.CopyFrom(metrics(req))
    return out


def stats(s: SchedulerStats, *, policy: str, mode: str, max_model_len: int) -> api.StatsResponse:
    c = s.counters
    out = api.StatsResponse(
        waiting=s.waiting,
        running=s.running,
        swapped=s.swapped,
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
        host_hits_declined=c.host_hits_declined,
        host_declined_tokens=c.host_declined_tokens,
        store_round_trip_s=s.store_round_trip_s,
        policy=policy,
        mode=mode,
        max_model_len=max_model_len,
    )
    out.tenants.extend(_tenant(t) for t in s.tenants)
    out.workers.extend(_worker(w) for w in s.workers)
    return out


def _tenant(t: TenantStats) -> api.TenantStats:
    return api.TenantStats(
        tenant=t.tenant,
        virtual_counter=t.virtual_counter,
        prompt_tokens=t.prompt_tokens,
        output_tokens=t.output_tokens,
        waiting=t.waiting,
        running=t.running,
        finished=t.finished,
        weight=t.weight,
    )


def _worker(w: WorkerStats) -> api.WorkerStats:
    return api.WorkerStats(
        worker_id=w.worker_id,
        device=w.device,
        num_blocks=w.num_blocks,
        free_blocks=w.free_blocks,
        running=w.running,
        steps=w.steps,
        mean_step_s=w.mean_step_s,
        swap_out_bytes=w.swap_out_bytes,
        swap_in_bytes=w.swap_in_bytes,
        largest_free_run=w.largest_free_run,
        step_s_total=w.step_s_total,
        idle_s_total=w.idle_s_total,
        forward_s_total=w.forward_s_total,
        prefill_tokens_per_s=w.prefill_tokens_per_s,
        copy_latency_s=w.copy_latency_s,
        copy_bytes_per_s=w.copy_bytes_per_s,
    )


def worker_info(hello: wk.WorkerHello) -> WorkerInfo:
    return WorkerInfo(
        worker_id=hello.worker_id,
        num_blocks=hello.num_blocks,
        block_size=hello.block_size,
        block_bytes=hello.block_bytes,
        max_model_len=hello.max_model_len,
        device=hello.device,
        address=hello.address or None,
        costs=DeviceCosts(
            prefill_tokens_per_s=hello.prefill_tokens_per_s,
            copy_latency_s=hello.copy_latency_s,
            copy_bytes_per_s=hello.copy_bytes_per_s,
        ),
    )


def _runs(runs: tuple[BlockRun, ...]) -> list[wk.Run]:
    return [wk.Run(start=r.start, count=r.count) for r in runs]


def _sampling(s: Sampling) -> wk.WorkerSampling:
    out = wk.WorkerSampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k)
    if s.seed is not None:
        out.seed = s.seed
    return out


def _copies(order: SwapOrder) -> list[wk.RunCopy]:
    return [
        wk.RunCopy(device_start=c.device_start, host_start=c.host_start, count=c.count)
        for c in order.copies
    ]


def plan_to_proto(plan: StepPlan) -> wk.StepPlan:
    msg = wk.StepPlan(step_id=plan.step_id, decode=plan.decode, drop=plan.drop)
    for s in plan.start:
        start = msg.start.add(
            seq=s.seq,
            sampling=_sampling(s.sampling),
            position=s.position,
            num_generated=s.num_generated,
            blocks=_runs(s.blocks),
        )
        if s.last_token is not None:
            start.last_token = s.last_token
    for a in plan.append:
        msg.append.add(seq=a.seq, blocks=_runs(a.blocks))
    for c in plan.prefill:
        msg.prefill.add(seq=c.seq, token_ids=c.token_ids, sample=c.sample)
    for o in plan.swap_in:
        msg.swap_in.add(seq=o.seq, copies=_copies(o), lease_id=o.lease_id)
    for o in plan.swap_out:
        msg.swap_out.add(
            seq=o.seq,
            copies=_copies(o),
            lease_id=o.lease_id,
            block_hashes=[h or b"" for h in o.block_hashes],  # b"": a private block
            tenant=o.tenant or "",
            ttl_s=o.ttl_s or 0.0,
        )
    msg.cancel_swap_out.extend(plan.cancel_swap_out)
    return msg


def output_from_proto(msg: wk.StepResult) -> StepOutput:
    return StepOutput(
        step_id=msg.step_id,
        sampled=dict(zip(msg.seqs, msg.tokens, strict=True)),
        swap_out_done=tuple(msg.swap_out_done),
        swap_in_done=tuple(msg.swap_in_done),
        swap_out_cancelled=tuple(msg.swap_out_cancelled),
        errors={e.seq: e.message for e in msg.errors},
        forward_s=msg.timing.forward_s,
        step_s=msg.timing.step_s,
        idle_s=msg.timing.idle_s,
        swap_out_bytes=msg.swap_out_bytes,
        swap_in_bytes=msg.swap_in_bytes,
        committed={c.seq: tuple(c.blocks) for c in msg.committed},
        swap_out_failed=tuple(msg.swap_out_failed),
    )
