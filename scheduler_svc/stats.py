"""The scheduler core's counters and its typed stats snapshot (``SchedulerCore.stats()``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """Totals since the scheduler started; each part of the core adds to its own fields."""

    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    preemptions: int = 0  # = swap_preemptions + recompute_preemptions
    swap_preemptions: int = 0  # chosen to swap out (a failed swap then recomputes too)
    recompute_preemptions: int = 0  # chosen to drop the KV and prefill again
    recomputes: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    reuse_hit_tokens: int = 0
    swap_bytes_avoided: int = 0
    retained_lookups: int = 0
    retained_hit_blocks: int = 0
    host_hits_declined: int = 0  # retained prefixes found but computed: fetching costs more
    host_declined_tokens: int = 0
    offloaded_blocks: int = 0
    device_hit_tokens: int = 0  # tokens whose KV a request shared from a worker's cached blocks
    device_hit_blocks: int = 0
    device_evicted_blocks: int = 0  # cached device blocks taken back for other allocations
    # Cache-aware placement (scheduler_svc.placement): admissions it decided (on the worker a
    # request was left for, or ahead of a better-ranked request overtaken in its band), and
    # times a worker left a request for another whose cache holds more of its prefix, and
    # requests so left that ran on another worker after all (taken rather than idle, or due).
    locality_placements: int = 0
    locality_deferrals: int = 0
    locality_fallbacks: int = 0
    store_losses: int = 0  # the KV store died or restarted (host copies forgotten)
    # Sampled tokens nobody sees: their request finished (a plan made ahead decoded past its
    # last token), was cancelled or moved while the step ran.
    discarded_tokens: int = 0
    schedule_s: float = 0.0  # wall time in ``schedule`` and ``update_from_output``


@dataclass(frozen=True, slots=True)
class TenantStats:
    tenant: str
    virtual_counter: float
    weight: float
    prompt_tokens: int
    output_tokens: int
    waiting: int  # waiting or swapped
    running: int  # resident on a worker
    finished: int


@dataclass(frozen=True, slots=True)
class WorkerStats:
    worker_id: str
    device: str
    num_blocks: int
    free_blocks: int
    largest_free_run: int
    running: int
    steps: int
    step_s_total: float
    forward_s_total: float
    idle_s_total: float
    swap_out_bytes: int
    swap_in_bytes: int
    # Measured by the worker at start (scheduler_svc/fetch_cost.py; 0: not measured).
    prefill_tokens_per_s: float = 0.0
    copy_latency_s: float = 0.0
    copy_bytes_per_s: float = 0.0

    @property
    def mean_step_s(self) -> float:
        return self.step_s_total / self.steps if self.steps else 0.0


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A snapshot of the core: queue sizes, a copy of its counters, tenants and workers (sorted)."""

    waiting: int
    running: int
    swapped: int
    counters: Counters  # a copy: later steps do not change it
    tenants: tuple[TenantStats, ...]
    workers: tuple[WorkerStats, ...]
    store_round_trip_s: float = 0.0  # the host agent's round trips to the KV store, averaged
