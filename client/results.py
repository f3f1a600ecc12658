"""Typed results of the SDK: plain frozen dataclasses converted from the public API's messages.

Nothing here keeps a reference to a protobuf message; every sequence is a tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proto import scheduler_pb2 as pb


class FinishReason(StrEnum):
    """Why a completion ended."""

    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    CANCELLED = "cancelled"
    ABORTED = "aborted"  # an internal failure on the server


_FINISH = {
    pb.FINISH_REASON_STOP: FinishReason.STOP,
    pb.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    pb.FINISH_REASON_CANCELLED: FinishReason.CANCELLED,
    pb.FINISH_REASON_ABORTED: FinishReason.ABORTED,
}


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """Server-side timing and context-switch counts of one request (seconds, tokens, events)."""

    queue_s: float = 0.0
    ttft_s: float = 0.0
    tbt_s: tuple[float, ...] = ()
    e2e_s: float = 0.0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    recomputes: int = 0

    @classmethod
    def from_proto(cls, m: pb.RequestMetrics) -> RequestMetrics:
        return cls(
            queue_s=m.queue_s,
            ttft_s=m.ttft_s,
            tbt_s=tuple(m.tbt_s),
            e2e_s=m.e2e_s,
            prompt_tokens=m.prompt_tokens,
            cached_prompt_tokens=m.cached_prompt_tokens,
            preemptions=m.preemptions,
            swap_outs=m.swap_outs,
            swap_ins=m.swap_ins,
            recomputes=m.recomputes,
        )


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One streamed piece of a completion: the tokens produced since the previous chunk.

    ``finish_reason`` and ``metrics`` are set on the last chunk only. ``text`` may be empty in the
    middle of a multi-byte character.
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None
    metrics: RequestMetrics | None = None
    conversation_id: str | None = None
    worker_id: str | None = None

    @classmethod
    def from_proto(cls, c: pb.GenerateChunk) -> GenerationChunk:
        return cls(
            request_id=c.request_id,
            token_ids=tuple(c.token_ids),
            text=c.text,
            finish_reason=_FINISH.get(c.finish_reason),
            metrics=RequestMetrics.from_proto(c.metrics) if c.HasField("metrics") else None,
            conversation_id=c.conversation_id or None,
            worker_id=c.worker_id or None,
        )


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole completion, assembled from its chunks.

    ``metrics`` are the server's; the ``client_*`` fields are measured by the SDK from the moment
    the call was made (they include the network and the client's own event loop):
    ``client_ttft_s`` is None when no token came back, ``client_tbt_s`` has one gap per token after
    the first (tokens that arrive in one chunk share that chunk's gap evenly).
    """

    request_id: str
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    metrics: RequestMetrics
    worker_id: str | None = None
    conversation_id: str | None = None
    client_ttft_s: float | None = None
    client_tbt_s: tuple[float, ...] = ()
    client_e2e_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TenantStats:
    """Service received by one tenant (the client identity used for fairness)."""

    tenant: str
    virtual_counter: float
    prompt_tokens: int
    output_tokens: int
    waiting: int
    running: int
    finished: int
    weight: float

    @classmethod
    def from_proto(cls, t: pb.TenantStats) -> TenantStats:
        return cls(
            tenant=t.tenant,
            virtual_counter=t.virtual_counter,
            prompt_tokens=t.prompt_tokens,
            output_tokens=t.output_tokens,
            waiting=t.waiting,
            running=t.running,
            finished=t.finished,
            weight=t.weight,
        )


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One joined worker as the scheduler sees it."""

    worker_id: str
    device: str
    num_blocks: int
    free_blocks: int
    running: int
    steps: int
    mean_step_s: float
    swap_out_bytes: int
    swap_in_bytes: int
    largest_free_run: int
    step_s_total: float = 0.0  # plan received -> result sent, summed over steps
    idle_s_total: float = 0.0  # result sent -> next plan received (control-plane wait)
    forward_s_total: float = 0.0
    # Measured by the worker at start, for fetch-or-compute (0: not measured).
    prefill_tokens_per_s: float = 0.0
    copy_latency_s: float = 0.0
    copy_bytes_per_s: float = 0.0

    @classmethod
    def from_proto(cls, w: pb.WorkerStats) -> WorkerStats:
        return cls(
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


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of the scheduler (mirror of ``StatsResponse``)."""

    waiting: int
    running: int
    swapped: int
    finished: int
    cancelled: int
    failed: int
    preemptions: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    swap_out_bytes: int
    swap_in_bytes: int
    reuse_hit_tokens: int
    swap_bytes_avoided: int
    policy: str
    mode: str
    tenants: tuple[TenantStats, ...]
    workers: tuple[WorkerStats, ...]
    retained_lookups: int = 0  # prompts looked up in the retained KV
    retained_hit_blocks: int = 0
    offloaded_blocks: int = 0  # blocks offloaded at finish, to be retained
    max_model_len: int | None = None  # the model's context in tokens (None: not reported)
    host_hits_declined: int = 0  # retained prefixes found but prefilled: fetching costs more
    host_declined_tokens: int = 0
    store_round_trip_s: float = 0.0

    @classmethod
    def from_proto(cls, s: pb.StatsResponse) -> Stats:
        return cls(
            waiting=s.waiting,
            running=s.running,
            swapped=s.swapped,
            finished=s.finished,
            cancelled=s.cancelled,
            failed=s.failed,
            preemptions=s.preemptions,
            swap_outs=s.swap_outs,
            swap_ins=s.swap_ins,
            recomputes=s.recomputes,
            swap_out_bytes=s.swap_out_bytes,
            swap_in_bytes=s.swap_in_bytes,
            reuse_hit_tokens=s.reuse_hit_tokens,
            swap_bytes_avoided=s.swap_bytes_avoided,
            policy=s.policy,
            mode=s.mode,
            tenants=tuple(TenantStats.from_proto(t) for t in s.tenants),
            workers=tuple(WorkerStats.from_proto(w) for w in s.workers),
            retained_lookups=s.retained_lookups,
            retained_hit_blocks=s.retained_hit_blocks,
            offloaded_blocks=s.offloaded_blocks,
            max_model_len=s.max_model_len or None,
            host_hits_declined=s.host_hits_declined,
            host_declined_tokens=s.host_declined_tokens,
            store_round_trip_s=s.store_round_trip_s,
        )

    def tenant(self, name: str) -> TenantStats | None:
        """The stats of one tenant, or None when the scheduler has not seen it."""
        return next((t for t in self.tenants if t.tenant == name), None)
