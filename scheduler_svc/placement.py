"""Cache-aware placement: the order in which a worker takes waiting requests, and which ones it
leaves for another worker whose device cache holds more of their prefix (the device tier,
``--device-prefix-cache``; ``--locality-max-waits 0`` turns placement off).

There is one wait queue, and each worker's admission takes from it when that worker plans. So
where a request runs is decided by which worker takes it, and that is decided here, in three
rules, fairness first:

* **Near-ties only.** The policy ranks the queue. Locality reorders only a *band*: consecutive
  ranked requests each a near-tie of the band's head (``Policy.near_tie``: VTC, a tenant whose
  counter is at most the quantum ``preempt_margin`` above the head's, the same slack that
  decides preemption; priority, the same priority; FCFS, never: arrival order is that policy).
  Within a band the worker takes first the requests whose prefill its own cache saves most (the
  longest device match: DLPM's longest prefix match inside the deficit); bands keep the policy's
  order, so a tenant more than a quantum ahead never goes before one behind.
* **Leave it for the worker that holds it.** Worker S leaves a new request for worker W when W's
  cache saves more of its prefill, W has a batch slot and blocks for it (counting what this pass
  already left for W), and its prefill would be done sooner there: one step of waiting for W's
  next plan plus the prefill queued on W ahead of it, against what is queued on S
  (:meth:`WorkerLoad.steps_to_prefill`). So a W with a hit but a long queue loses to an idle S,
  and a short shared prefix (less than about one step of prefill) is not worth a wait. Only
  locality ever leaves a request (a longer match elsewhere), never load alone, and a swapped
  request (whose device match saves copies, not prefill) is never left.
* **Bounded waits, no idling.** Each time locality keeps a request waiting (left by one worker
  for another, or overtaken in its band by a lower-ranked request admitted for its longer
  match), its ``locality_waits`` grows; at ``max_waits`` it is *due*: first in its band in rank
  order, and never left again. A worker that would compute nothing this step takes the best
  request it left for a busy worker (or one that waited before) rather than idle
  (:meth:`PlacementPass.fallback`); a fresh one left for an idle worker is that worker's at its
  next plan, which the same wake-up brings at once.

A request admitted on the worker it was left for, or ahead of a better-ranked request it
overtook, is a *locality placement* (``Counters.locality_placements``); each time a worker
leaves a request for another is a ``locality_deferral``; a request left for another worker that
runs here after all (taken rather than idle, or due) is a ``locality_fallback``: locality gave
way, and the request computes its prefix here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler_svc.host_copies import HostCopies
from scheduler_svc.policy import Policy
from scheduler_svc.request import Request
from scheduler_svc.stats import Counters
from scheduler_svc.workers import WorkerRegistry, WorkerSlot

WINDOW = 64  # the least number of ranked requests placement looks at


def shareable_blocks(req: Request, block_size: int) -> int:
    """How many of a new request's full blocks a device match may cover: every one but the
    block holding its last token, so it computes at least one block of its own."""
    return (req.num_tokens - 1) // block_size


@dataclass(slots=True)
class WorkerLoad:
    """What a worker has queued, as placement estimates it: prompt tokens its resident requests
    have left to prefill, how many decode (each takes one token of every step's budget), and
    the batch slots and blocks it has free."""

    prefill_tokens: int
    decodes: int
    free_seqs: int
    free_blocks: int

    @classmethod
    def of(cls, slot: WorkerSlot, max_num_seqs: int) -> WorkerLoad:
        prefill = decodes = 0
        for req in slot.running.values():
            if req.decode_ready:
                decodes += 1
            else:
                prefill += req.num_tokens - req.num_computed
        free_seqs = max_num_seqs - len(slot.running)
        return cls(prefill, decodes, free_seqs, slot.allocator.num_free)

    def steps_to_prefill(self, tokens: int, budget: int) -> float:
        """Steps until `tokens` more prefill, queued behind this worker's own, is computed."""
        return (self.prefill_tokens + tokens) / max(1, budget - self.decodes)

    def has_room(self, blocks: int) -> bool:
        return self.free_seqs > 0 and self.free_blocks >= blocks

    def take(self, tokens: int, blocks: int) -> None:
        self.prefill_tokens += tokens
        self.free_seqs -= 1
        self.free_blocks -= blocks


def better_elsewhere(
    here: WorkerLoad,
    there: WorkerLoad,
    *,
    tokens_here: int,
    tokens_there: int,
    blocks_there: int,
    budget: int,
) -> bool:
    """Whether a request that prefills `tokens_here` tokens here but only `tokens_there` there
    (its longer cached prefix) should wait for there: it fits there, and even after waiting one
    step for that worker's next plan its prefill is done sooner."""
    if tokens_there >= tokens_here or not there.has_room(blocks_there):
        return False
    return 1 + there.steps_to_prefill(tokens_there, budget) < here.steps_to_prefill(
        tokens_here, budget
    )


def locality_order(
    ranked: Sequence[Request],
    *,
    near_tie: Callable[[Request, Request], bool],
    saved: Callable[[Request], int],
    due: Callable[[Request], bool],
) -> list[Request]:
    """`ranked` (the policy's order) with each band of near-ties of its head sorted by the
    prefill tokens `saved` here, most first; due requests go first in their band, in rank
    order, and equal savings keep rank order."""
    out: list[Request] = []
    i = 0
    while i < len(ranked):
        j = i + 1
        while j < len(ranked) and near_tie(ranked[i], ranked[j]):
            j += 1
        band = ranked[i:j]
        out.extend(sorted(band, key=lambda r: (0, 0) if due(r) else (1, -saved(r))))
        i = j
    return out


@dataclass(frozen=True, slots=True)
class PlacementLimits:
    margin: float  # the policy's fairness margin (the preemption quantum)
    max_waits: int  # 0: placement off
    max_num_seqs: int
    max_batched_tokens: int
    max_prefill_chunk: int


class Placement:
    """Cache-aware placement across the workers (the module docstring). Owns nothing but its
    limits; each admission pass of a worker opens a :class:`PlacementPass`."""

    def __init__(
        self,
        limits: PlacementLimits,
        policy: Policy,
        *,
        workers: WorkerRegistry,
        host: HostCopies,
        counters: Counters,
        enabled: bool,
    ) -> None:
        self.limits = limits
        self.policy = policy
        self.workers = workers
        self.host = host
        self.counters = counters
        self.enabled = enabled and limits.max_waits > 0

    def leaves(self, slot: WorkerSlot, req: Request) -> bool:
        """Whether `slot` would leave `req` for another worker (a pass opened only to ask)."""
        return self.enabled and self.begin(slot, [req]).leave(req)

    def begin(self, slot: WorkerSlot, ready: Sequence[Request]) -> PlacementPass:
        """A pass of `slot`'s admission over `ready` (the admissible waiting requests, in rank
        order)."""
        return PlacementPass(self, slot, ready)


class PlacementPass:
    """One worker's admission pass: the order it tries requests in (:attr:`order`), which it
    leaves for another worker (:meth:`leave`), and, at :meth:`finish`, the waits and counters
    that locality caused. Nothing changes on a request before ``finish``, so a pass may be
    opened only to ask (:meth:`leave`) and dropped."""

    def __init__(self, placement: Placement, slot: WorkerSlot, ready: Sequence[Request]) -> None:
        self._p = placement
        self._slot = slot
        self._ready = list(ready)
        self._saved: dict[tuple[str, int], int] = {}
        self._loads: dict[str, WorkerLoad] = {}
        self._left: dict[int, str] = {}  # seq -> the worker it was left for
        self._gave_way: set[int] = set()  # admitted here though left for another worker
        # Off (the default without the device tier), nothing here is asked: the step loop does
        # not pay for the load of a worker nobody compares.
        self._here = (
            WorkerLoad.of(slot, placement.limits.max_num_seqs)
            if placement.enabled
            else WorkerLoad(0, 0, 0, 0)
        )
        # Locality looks a bounded way ahead (a step admits at most a batch): past it, the
        # policy's order stands, and no match is computed for a long queue's tail.
        window = max(WINDOW, 2 * placement.limits.max_num_seqs) if placement.enabled else 0
        self._window = {r.seq for r in self._ready[:window]}
        margin = placement.limits.margin
        self.order = (
            locality_order(
                self._ready[:window],
                near_tie=lambda a, b: placement.policy.near_tie(a, b, margin),
                saved=lambda r: self.saved(slot, r),
                due=self._due,
            )
            + self._ready[window:]
        )

    def saved(self, slot: WorkerSlot, req: Request) -> int:
        """Prefill tokens `slot`'s cached blocks would save `req` (0 for one already computed
        in part: a swapped request's device match saves copies, not prefill)."""
        if req.num_computed:
            return 0
        key = (slot.worker_id, req.seq)
        if key not in self._saved:
            bs = slot.info.block_size
            hashes = self._p.host.hashes(req, shareable_blocks(req, bs))
            self._saved[key] = len(slot.allocator.match(hashes)) * bs
        return self._saved[key]

    def _due(self, req: Request) -> bool:
        return req.locality_waits >= self._p.limits.max_waits

    def leave(self, req: Request) -> bool:
        """Whether this worker leaves `req` for another whose cache saves it more prefill (the
        module docstring's second rule); if so, that worker's load counts it for the rest of the
        pass."""
        if req.seq not in self._window or req.num_computed or self._due(req):
            return False
        lim = self._p.limits
        tokens_here = req.num_tokens - self.saved(self._slot, req)
        best: tuple[float, WorkerSlot, int, int] | None = None
        for other in self._p.workers:
            if other is self._slot or req.num_tokens + 1 > other.info.capacity_tokens:
                continue
            saved = self.saved(other, req)
            tokens = req.num_tokens - saved
            first = min(tokens, lim.max_prefill_chunk, lim.max_batched_tokens)
            blocks = other.info.blocks_for(saved + first)
            load = self._load(other)
            if not better_elsewhere(
                self._here,
                load,
                tokens_here=tokens_here,
                tokens_there=tokens,
                blocks_there=blocks,
                budget=lim.max_batched_tokens,
            ):
                continue
            steps = load.steps_to_prefill(tokens, lim.max_batched_tokens)
            if best is None or steps < best[0]:
                best = (steps, other, tokens, blocks)
        if best is None:
            return False
        _, other, tokens, blocks = best
        self._load(other).take(tokens, blocks)
        self._left[req.seq] = other.worker_id
        return True

    def _load(self, slot: WorkerSlot) -> WorkerLoad:
        load = self._loads.get(slot.worker_id)
        if load is None:
            load = self._loads[slot.worker_id] = WorkerLoad.of(slot, self._p.limits.max_num_seqs)
        return load

    def admitted(self, req: Request) -> None:
        """`req` was admitted here: this worker's queued prefill grows by what it has left."""
        self._here.take(req.num_tokens - req.num_computed, 0)
        if self._left.pop(req.seq, None) is not None or req.left_for not in (
            None,
            self._slot.worker_id,
        ):
            self._gave_way.add(req.seq)

    def fallback(self) -> list[Request]:
        """The requests this pass left for another worker that an idle worker takes rather than
        idle, best first: those left for a busy worker, and those locality kept waiting before.
        A fresh one left for an idle worker is not taken: that worker was woken by the same
        change that made the request admissible, and plans at once (one that waited before may
        have been passed by that worker's last plan, when the caches stood otherwise)."""
        return [
            r
            for r in self.order
            if r.seq in self._left and (r.locality_waits or self._busy(self._left[r.seq]))
        ]

    def _busy(self, worker_id: str) -> bool:
        slot = self._p.workers.get(worker_id)
        return slot is not None and bool(slot.running)

    def finish(self, admitted: set[int]) -> None:
        """Counts what locality did in this pass: requests left for another worker, requests
        overtaken in their band (each one more wait), admissions it placed, and those where it
        gave way."""
        if not self._p.enabled:
            return
        c = self._p.counters
        c.locality_fallbacks += len(self._gave_way & admitted)
        for req in self._ready:
            if req.seq in self._left:
                req.locality_waits += 1
                req.left_for = self._left[req.seq]
                c.locality_deferrals += 1
        rank = {r.seq: i for i, r in enumerate(self._ready)}
        overtaken = [
            r
            for r in self._ready[: max((rank[s] for s in admitted), default=0)]
            if r.seq not in admitted and r.seq not in self._left
        ]
        for req in overtaken:
            req.locality_waits += 1
        first_overtaken = rank[overtaken[0].seq] if overtaken else len(self._ready)
        for req in self._ready:
            if req.seq not in admitted:
                continue
            if req.left_for == self._slot.worker_id or rank[req.seq] > first_overtaken:
                c.locality_placements += 1
            req.locality_waits = 0
            req.left_for = None
