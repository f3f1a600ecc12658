"""Conversions between ``proto/worker.proto`` messages and the worker's plain data (plan.py,
metrics.py). The only place, with the link and the servicer, that touches worker protobufs.

Proto's empty defaults become None on the way in (an empty lease id, block hash or tenant, a
zero ttl, an unset optional) and go back to them on the way out, so the round trip keeps every
field. One exception: a ``top_p`` of 0 (unset) means no top-p filter, 1.0.
"""

from __future__ import annotations

from collections.abc import Iterable

from proto import worker_pb2 as wk
from worker_svc.metrics import WorkerStats
from worker_svc.plan import (
    BlockAppend,
    BlockRun,
    CommittedBlocks,
    PrefillChunk,
    RunCopy,
    Sampling,
    SeqError,
    SeqStart,
    StepPlan,
    StepResult,
    StepTiming,
    SwapIn,
    SwapOut,
    WorkerHello,
)

# ------------------------------------------------------------------ proto -> plan


def plan_from_proto(msg: wk.StepPlan) -> StepPlan:
    return StepPlan(
        step_id=msg.step_id,
        start=tuple(_start(s) for s in msg.start),
        append=tuple(BlockAppend(a.seq, _block_runs(a.blocks)) for a in msg.append),
        swap_in=tuple(SwapIn(s.seq, _copies(s.copies), s.lease_id or None) for s in msg.swap_in),
        prefill=tuple(PrefillChunk(c.seq, tuple(c.token_ids), c.sample) for c in msg.prefill),
        decode=tuple(msg.decode),
        swap_out=tuple(_swap_out(s) for s in msg.swap_out),
        cancel_swap_out=tuple(msg.cancel_swap_out),
        drop=tuple(msg.drop),
    )


def _start(s: wk.SeqStart) -> SeqStart:
    sampling = Sampling(
        temperature=s.sampling.temperature,
        top_p=s.sampling.top_p or 1.0,
        top_k=s.sampling.top_k,
        seed=s.sampling.seed if s.sampling.HasField("seed") else None,
    )
    return SeqStart(
        seq=s.seq,
        sampling=sampling,
        position=s.position,
        last_token=s.last_token if s.HasField("last_token") else None,
        num_generated=s.num_generated,
        blocks=_block_runs(s.blocks),
    )


def _swap_out(s: wk.SwapOut) -> SwapOut:
    return SwapOut(
        seq=s.seq,
        copies=_copies(s.copies),
        lease_id=s.lease_id or None,
        block_hashes=tuple(h or None for h in s.block_hashes),
        tenant=s.tenant or None,
        ttl_s=s.ttl_s or None,
    )


def _block_runs(runs: Iterable[wk.Run]) -> tuple[BlockRun, ...]:
    return tuple(BlockRun(r.start, r.count) for r in runs)


def _copies(copies: Iterable[wk.RunCopy]) -> tuple[RunCopy, ...]:
    return tuple(RunCopy(c.device_start, c.host_start, c.count) for c in copies)


# ------------------------------------------------------------------ plan -> proto


def plan_to_proto(plan: StepPlan) -> wk.StepPlan:
    """The inverse of ``plan_from_proto`` (what a scheduler sends; tests and tools use it)."""
    return wk.StepPlan(
        step_id=plan.step_id,
        start=[_start_msg(s) for s in plan.start],
        append=[wk.BlockAppend(seq=a.seq, blocks=_run_msgs(a.blocks)) for a in plan.append],
        swap_in=[
            wk.SwapIn(seq=s.seq, copies=_copy_msgs(s.copies), lease_id=s.lease_id or "")
            for s in plan.swap_in
        ],
        prefill=[
            wk.PrefillChunk(seq=c.seq, token_ids=c.token_ids, sample=c.sample) for c in plan.prefill
        ],
        decode=plan.decode,
        swap_out=[_swap_out_msg(s) for s in plan.swap_out],
        cancel_swap_out=plan.cancel_swap_out,
        drop=plan.drop,
    )


def _start_msg(s: SeqStart) -> wk.SeqStart:
    p = s.sampling
    return wk.SeqStart(
        seq=s.seq,
        sampling=wk.WorkerSampling(
            temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed
        ),
        position=s.position,
        last_token=s.last_token,
        num_generated=s.num_generated,
        blocks=_run_msgs(s.blocks),
    )


def _swap_out_msg(s: SwapOut) -> wk.SwapOut:
    return wk.SwapOut(
        seq=s.seq,
        copies=_copy_msgs(s.copies),
        lease_id=s.lease_id or "",
        block_hashes=[h or b"" for h in s.block_hashes],
        tenant=s.tenant or "",
        ttl_s=s.ttl_s or 0.0,
    )


def _run_msgs(runs: Iterable[BlockRun]) -> list[wk.Run]:
    return [wk.Run(start=r.start, count=r.count) for r in runs]


def _copy_msgs(copies: Iterable[RunCopy]) -> list[wk.RunCopy]:
    return [
        wk.RunCopy(device_start=c.device_start, host_start=c.host_start, count=c.count)
        for c in copies
    ]


# ------------------------------------------------------------------ results


def result_to_proto(result: StepResult) -> wk.StepResult:
    t = result.timing
    return wk.StepResult(
        step_id=result.step_id,
        seqs=result.seqs,
        tokens=result.tokens,
        swap_out_done=result.swap_out_done,
        swap_in_done=result.swap_in_done,
        swap_out_cancelled=result.swap_out_cancelled,
        timing=wk.StepTiming(
            forward_s=t.forward_s, step_s=t.step_s, swap_wait_s=t.swap_wait_s, idle_s=t.idle_s
        ),
        errors=[wk.SeqError(seq=e.seq, message=e.message) for e in result.errors],
        swap_out_bytes=result.swap_out_bytes,
        swap_in_bytes=result.swap_in_bytes,
        swap_copies=result.swap_copies,
        committed=[wk.CommittedBlocks(seq=c.seq, blocks=c.blocks) for c in result.committed],
        swap_out_failed=result.swap_out_failed,
    )


def result_from_proto(msg: wk.StepResult) -> StepResult:
    """The inverse of ``result_to_proto`` (what a scheduler reads; tests and tools use it)."""
    t = msg.timing
    return StepResult(
        step_id=msg.step_id,
        seqs=tuple(msg.seqs),
        tokens=tuple(msg.tokens),
        swap_out_done=tuple(msg.swap_out_done),
        swap_in_done=tuple(msg.swap_in_done),
        swap_out_cancelled=tuple(msg.swap_out_cancelled),
        timing=StepTiming(t.forward_s, t.step_s, t.swap_wait_s, t.idle_s),
        errors=tuple(SeqError(e.seq, e.message) for e in msg.errors),
        swap_out_bytes=msg.swap_out_bytes,
        swap_in_bytes=msg.swap_in_bytes,
        swap_copies=msg.swap_copies,
        committed=tuple(CommittedBlocks(c.seq, tuple(c.blocks)) for c in msg.committed),
        swap_out_failed=tuple(msg.swap_out_failed),
    )


# ------------------------------------------------------------------ hello, stats


def hello_to_proto(hello: WorkerHello) -> wk.WorkerHello:
    return wk.WorkerHello(
        worker_id=hello.worker_id,
        model_fingerprint=hello.model_fingerprint,
        num_blocks=hello.num_blocks,
        block_size=hello.block_size,
        block_bytes=hello.block_bytes,
        max_model_len=hello.max_model_len,
        device=hello.device,
        address=hello.address,
        vocab_size=hello.vocab_size,
        prefill_tokens_per_s=hello.prefill_tokens_per_s,
        copy_latency_s=hello.copy_latency_s,
        copy_bytes_per_s=hello.copy_bytes_per_s,
    )


def stats_to_proto(stats: WorkerStats) -> wk.WorkerStatsResponse:
    """GPU fields: the telemetry read, or ``gpu`` saying why there is none."""
    out = wk.WorkerStatsResponse(
        worker_id=stats.worker_id,
        device=stats.device,
        num_blocks=stats.num_blocks,
        live_seqs=stats.live_seqs,
        steps=stats.steps,
        swap_out_bytes=stats.swap_out_bytes,
        swap_in_bytes=stats.swap_in_bytes,
        gpu=stats.gpu_unavailable or "",
    )
    if stats.gpu is not None:
        out.gpu = stats.gpu.name
        out.gpu_util = stats.gpu.utilization
        out.gpu_mem_used = stats.gpu.memory_used
        out.gpu_mem_total = stats.gpu.memory_total
    return out
