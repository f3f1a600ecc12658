"""The scheduler core's configuration, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_svc.fetch_cost import HOST_FETCH
from scheduler_svc.swaps import HOST_WRITE
from servekit.names import PREEMPTIONS


@dataclass(frozen=True, slots=True)
class CoreConfig:
    max_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_prefill_chunk: int = 512
    growth_allowance: int = 4
    max_waiting: int = 10_000
    # Tenants: one idle (no waiting or running request) this long leaves the live table and the
    # stats; at most this many are in the table (a new one over it: RESOURCE_EXHAUSTED).
    tenant_idle_s: float = 600.0
    max_tenants: int = 1024
    # Context switching.
    preemption: str = "recompute"  # "swap" needs a KV store
    kv_reuse: bool = True
    min_swap_tokens: int = 32
    priority_update_interval: int = 4
    preempt_margin: float = 1024.0  # the preemption quantum (scheduler_svc.policy)
    # Retained KV: finished requests' blocks are offloaded and content-addressed, and new prompts
    # look up their longest retained prefix (needs swap preemption and kv_reuse).
    retain: bool = False
    # The device tier: finished requests' full blocks stay cached in the worker's pool, and new
    # requests share their longest cached prefix there (read-only, reference counted).
    device_prefix_cache: bool = False
    # Cache-aware placement over the device tier (scheduler_svc.placement): a request waits for
    # locality at most this many times (left for another worker, overtaken in its band); 0: off.
    locality_max_waits: int = 8
    # Isolation: tenants never share cached KV (their blocks hash with their own salt) except
    # within a group declared here (scheduler_svc.prefix_hash.group_salt); none by default.
    shared_prefix_tenants: tuple[tuple[str, ...], ...] = ()
    # Fetch a retained prefix from the host when the workers' measured costs say it is faster
    # than prefilling it ("auto"), or always, or never (scheduler_svc/fetch_cost.py).
    host_fetch: str = "auto"
    # Asynchronous scheduling: a worker's next plan is made while its current step runs (one
    # plan ahead), so the worker never waits on the scheduler between steps.
    async_scheduling: bool = False
    # Which finished requests' blocks are written to the host arena (scheduler_svc/swaps.py
    # HostWrite): "through" (every full block the host lacks) or "selective" (only the blocks
    # that were hit at least once). Measured on the prefix-sharing benchmark: docs/architecture.md.
    host_write: str = "through"

    def __post_init__(self) -> None:
        for name in (
            "max_batched_tokens",
            "max_num_seqs",
            "max_prefill_chunk",
            "max_waiting",
            "priority_update_interval",
            "max_tenants",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if (
            self.growth_allowance < 0
            or self.min_swap_tokens < 0
            or self.preempt_margin < 0
            or self.locality_max_waits < 0
        ):
            raise ValueError(
                "growth_allowance, min_swap_tokens, preempt_margin and locality_max_waits must"
                " be >= 0"
            )
        if not self.tenant_idle_s >= 0:  # also NaN
            raise ValueError(f"tenant_idle_s must be >= 0, got {self.tenant_idle_s}")
        seen: set[str] = set()
        for group in self.shared_prefix_tenants:
            if len(set(group)) < 2 or seen & set(group) or not all(group):
                raise ValueError(
                    f"a sharing group names two or more tenants, each in one group: {group}"
                )
            seen.update(group)
        if self.preemption not in PREEMPTIONS:
            raise ValueError(f"preemption must be swap or recompute, got {self.preemption!r}")
        if self.host_fetch not in HOST_FETCH:
            raise ValueError(f"host_fetch must be one of {HOST_FETCH}, got {self.host_fetch!r}")
        if self.host_write not in HOST_WRITE:
            raise ValueError(f"host_write must be one of {HOST_WRITE}, got {self.host_write!r}")
        if self.retain and (self.preemption != "swap" or not self.kv_reuse):
            raise ValueError("retain needs preemption='swap' and kv_reuse")
