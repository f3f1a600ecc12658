"""Ranking policies: which request goes first. Lower ``sort_key`` = served first.

* ``fcfs``     — arrival order.
* ``priority`` — the client's priority (higher first; changeable while the request lives), then
  arrival.
* ``vtc``      — Virtual Token Counter (Sheng et al., OSDI'24): a counter per tenant grows by the
  service it receives (prompt tokens x ``w_prompt``, output tokens x ``w_output``, divided by the
  tenant's weight); the least-served tenant goes first; a tenant that becomes active is lifted to
  the smallest counter among the active tenants, so idling earns no credit.

Preemption by quantum (``--preempt-margin Q``, ``CoreConfig.preempt_margin``; default 1024, the
service one full step of decodes hands out at the default batch of 512 tokens and w_output 2).
``outranks(a, b, Q)`` is true when ``a``'s tenant trails ``b``'s by more than Q, and admission
(``scheduler_svc.admission``) preempts a running request ``b`` for the best-ranked waiting one
``a`` only then, and only while ``a`` lacks a batch slot or blocks; while the batch has room,
waiting requests are admitted by counter and nothing is preempted. Among the running requests
``a`` outranks by Q, the cheapest to switch goes first (blocks its host copy lacks plus blocks to
bring back, block runs, then more tokens left), and only as many as ``a`` needs.

* *The bound it keeps.* Between two backlogged tenants, the difference in service (weighted,
  divided by the tenants' weights) over any interval stays within VTC's own bound
  ``2 * max(w_prompt * L_input, w_output * M)`` (L_input the longest prompt, M the tokens a
  worker's KV holds) whatever Q: non-preemptive VTC keeps it (Sheng et al., OSDI'24, Theorem
  4.4: the less-served tenant takes every slot that frees), and a preemption only ever moves a
  slot from a tenant more than Q ahead to the one behind. What Q changes is when the less-served
  tenant stops waiting for a slot to free: never for a gap up to Q.
* *Hysteresis.* A tenant preempted for trailing by more than Q gets its slots back by
  preemption only once *it* trails by more than Q: the gap must swing by 2Q between a switch and
  the switch back, so two tenants served neck and neck (as VTC keeps them) do not trade their
  requests at every crossing; a request whose swap-in has just completed is not preempted
  before it has computed once. Q = 0 is fully preemptive VTC (a switch at every crossing).

Cache locality (``scheduler_svc.placement``) may reorder only near-ties (``near_tie``): VTC,
requests whose tenant's counter is within the same quantum Q of the best-ranked one's (a lead of
up to Q is worth neither a preemption nor a cache miss; a tenant more than Q ahead never goes
first, so the bound above grows by at most Q); priority, requests of the same priority; FCFS,
none (arrival order is the whole policy).

Tenants idle for a while leave the scheduler's live table (``SchedulerCore.prune_idle_tenants``)
and the policy hears ``on_pruned``. VTC keeps the pruned tenant's counter, one float (O(1) per
pruned tenant), because the lift rule needs it: a tenant that returns while no other is active
keeps its own counter, and one that returns among active tenants is lifted to their minimum
only when its own is lower, so forgetting a counter would hand a heavy tenant back the credit
it spent. A counter of 0 (a tenant never served) is the same as no counter and is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from scheduler_svc.request import Request
from servekit.names import Policy as PolicyName
from servekit.names import parse_choice


class Policy(Protocol):
    name: str

    def sort_key(self, req: Request) -> tuple[float, ...]: ...

    def on_activate(self, tenant: str, active: Mapping[str, int]) -> None:
        """`tenant` had no live request and now has one; `active` counts live requests."""

    def on_served(self, tenant: str, prompt_tokens: int, output_tokens: int) -> None: ...

    def on_pruned(self, tenant: str) -> None:
        """`tenant` has been idle long enough to leave the live table (keep what ranking needs)."""

    def counter(self, tenant: str) -> float: ...

    def weight(self, tenant: str) -> float:
        """The tenant's share of service (1 unless configured)."""

    def outranks(self, a: Request, b: Request, margin: float) -> bool:
        """Whether `a` should preempt `b` (by more than `margin` where that means anything)."""

    def near_tie(self, head: Request, other: Request, margin: float) -> bool:
        """Whether `other`, ranked after `head`, is close enough for cache locality to go
        first (``scheduler_svc.placement``); never true across a fairness claim."""


class FcfsPolicy:
    name = "fcfs"

    def sort_key(self, req: Request) -> tuple[float, ...]:
        return (req.arrival_s, req.seq)

    def on_activate(self, tenant: str, active: Mapping[str, int]) -> None:
        return None

    def on_served(self, tenant: str, prompt_tokens: int, output_tokens: int) -> None:
        return None

    def on_pruned(self, tenant: str) -> None:
        return None

    def counter(self, tenant: str) -> float:
        return 0.0

    def weight(self, tenant: str) -> float:
        return 1.0

    def outranks(self, a: Request, b: Request, margin: float) -> bool:
        return False  # arrival order never preempts; only memory pressure does

    def near_tie(self, head: Request, other: Request, margin: float) -> bool:
        return False  # arrival order is the whole policy: locality never reorders it


class PriorityPolicy(FcfsPolicy):
    name = "priority"

    def sort_key(self, req: Request) -> tuple[float, ...]:
        return (-req.priority, req.arrival_s, req.seq)

    def outranks(self, a: Request, b: Request, margin: float) -> bool:
        return a.priority > b.priority

    def near_tie(self, head: Request, other: Request, margin: float) -> bool:
        return other.priority == head.priority  # within a class, arrival is only a tiebreak


class VtcPolicy:
    name = "vtc"

    def __init__(
        self,
        *,
        w_prompt: float = 1.0,
        w_output: float = 2.0,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        if w_prompt < 0 or w_output < 0 or w_prompt + w_output == 0:
            raise ValueError(f"VTC weights must be >= 0 and not both 0: {w_prompt}, {w_output}")
        weights = dict(tenant_weights or {})
        for tenant, w in weights.items():
            if w <= 0:
                raise ValueError(f"tenant weight must be > 0: {tenant}={w}")
        self.w_prompt = w_prompt
        self.w_output = w_output
        self._weights = weights
        self._counters: dict[str, float] = {}

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def counter(self, tenant: str) -> float:
        return self._counters.get(tenant, 0.0)

    def sort_key(self, req: Request) -> tuple[float, ...]:
        return (self.counter(req.tenant), req.arrival_s, req.seq)

    def outranks(self, a: Request, b: Request, margin: float) -> bool:
        return self.counter(a.tenant) + margin < self.counter(b.tenant)

    def near_tie(self, head: Request, other: Request, margin: float) -> bool:
        # The quantum again: a lead of up to Q is worth neither a preemption nor a cache miss.
        return self.counter(other.tenant) <= self.counter(head.tenant) + margin

    def on_activate(self, tenant: str, active: Mapping[str, int]) -> None:
        others = [self.counter(t) for t, n in active.items() if n > 0 and t != tenant]
        if others:
            self._counters[tenant] = max(self.counter(tenant), min(others))

    def on_served(self, tenant: str, prompt_tokens: int, output_tokens: int) -> None:
        cost = prompt_tokens * self.w_prompt + output_tokens * self.w_output
        self._counters[tenant] = self.counter(tenant) + cost / self.weight(tenant)

    def on_pruned(self, tenant: str) -> None:
        """Keeps the counter (the lift rule needs it, see the module docstring) unless it is 0."""
        if self._counters.get(tenant) == 0.0:
            del self._counters[tenant]

    @property
    def num_counters(self) -> int:
        """Tenants whose counter is kept (live ones and pruned ones that were served)."""
        return len(self._counters)


def make_policy(
    name: str,
    *,
    w_prompt: float = 1.0,
    w_output: float = 2.0,
    tenant_weights: Mapping[str, float] | None = None,
) -> Policy:
    """The policy named ``name`` (one of :class:`servekit.names.Policy`); ValueError otherwise."""
    match parse_choice(PolicyName, "--policy", name):
        case PolicyName.FCFS:
            return FcfsPolicy()
        case PolicyName.PRIORITY:
            return PriorityPolicy()
        case _:
            return VtcPolicy(w_prompt=w_prompt, w_output=w_output, tenant_weights=tenant_weights)
