"""Tenant scoping of the public API: who may act for which tenant, whose requests a call may
touch, what a tenant sees of the statistics, and priority classes. Plain code, no gRPC.

* A **scope** is a tenant name (that tenant and its narrowings, ``servekit.keys.narrows``) or
  None (every tenant).
* A **priority class** caps a tenant's priority: its requests run at their class by default
  (priority 0, the proto's unset value) and may ask for less, never more. A narrowed tenant
  (``alice.sub``) has the class of the nearest tenant it narrows that has one.
* A tenant's view of the statistics (:func:`tenant_view`) holds its own tenants' rows, totals
  summed over those rows only, and the workers' ids, devices and sizes, never their load: the
  server-wide counters (preemptions, swaps, cache hits, cancelled, failed) would tell one
  tenant how busy the others are, so they read 0 there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from scheduler_svc.stats import Counters, SchedulerStats, WorkerStats
from servekit.keys import narrows


def in_scope(scope: str | None, tenant: str) -> bool:
    """True when a request of `tenant` is within `scope` (None: every tenant)."""
    return scope is None or narrows(tenant, scope)


class PriorityClasses:
    """Tenant -> the highest priority its requests may have. Empty: no caps (as without keys)."""

    def __init__(self, classes: Mapping[str, int] | None = None) -> None:
        self._classes = dict(classes or {})

    def __bool__(self) -> bool:
        return bool(self._classes)

    def class_of(self, tenant: str) -> int | None:
        """The class of `tenant`, or of the longest tenant it narrows that has one (None: none)."""
        while True:
            cls = self._classes.get(tenant)
            if cls is not None:
                return cls
            base, dot, _ = tenant.rpartition(".")
            if not dot:
                return None
            tenant = base

    def apply(self, tenant: str, priority: int) -> int:
        """The priority a request of `tenant` runs at when it asks for `priority`: 0 (unset)
        is its class, anything else is capped at its class."""
        cls = self.class_of(tenant)
        if cls is None:
            return priority
        return cls if priority == 0 else min(priority, cls)


def tenant_view(stats: SchedulerStats, scope: str) -> SchedulerStats:
    """The statistics a tenant key sees: only the rows within `scope`, totals over them."""
    rows = tuple(t for t in stats.tenants if in_scope(scope, t.tenant))
    counters = Counters(finished=sum(t.finished for t in rows))
    workers = tuple(_capacity_only(w) for w in stats.workers)
    return SchedulerStats(
        waiting=sum(t.waiting for t in rows),
        running=sum(t.running for t in rows),
        swapped=0,
        counters=counters,
        tenants=rows,
        workers=workers,
    )


def _capacity_only(w: WorkerStats) -> WorkerStats:
    return replace(
        w,
        free_blocks=0,
        largest_free_run=0,
        running=0,
        steps=0,
        step_s_total=0.0,
        forward_s_total=0.0,
        idle_s_total=0.0,
        swap_out_bytes=0,
        swap_in_bytes=0,
    )
