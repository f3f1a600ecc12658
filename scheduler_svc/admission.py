"""Admission: which requests compute in a worker's next step, and which are preempted for it.

    preemption by rank (every priority_update_interval iterations, rule 3 first)
    running requests, best-ranked first: decode, or the next prefill chunk (growing their blocks,
        preempting lower-ranked ones when blocks are short)
    waiting and swapped requests in placement's order (the policy's; near-ties by cache
        locality; some left for another worker: ``scheduler_svc.placement``), while budget,
        batch slots and blocks last

Capacity is asked before it is taken: an allocation that does not fit changes nothing.

The device tier (``device_prefix_cache``): a request placed on a worker first shares the
longest prefix of its full blocks that worker holds cached (``BlockGroupAllocator.share``), at
most every full block but the one holding its last token, so it always computes (or swaps in)
at least one block of its own and never writes a shared one. A new or recomputed request then
starts with ``num_computed`` at the matched tokens (its SeqStart's position, its first prefill
chunk begins there); a swapped one swaps in only the blocks after the match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from scheduler_svc.host_copies import HostCopies
from scheduler_svc.placement import Placement, shareable_blocks
from scheduler_svc.plan import BlockAppend, PrefillChunk, SeqStart, StepPlan
from scheduler_svc.policy import Policy
from scheduler_svc.request import Request, Status
from scheduler_svc.request_table import RequestTable
from scheduler_svc.stats import Counters
from scheduler_svc.swaps import SwapController
from scheduler_svc.waiting import WaitQueue
from scheduler_svc.workers import WorkerSlot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The knobs of admission and preemption (from CoreConfig)."""

    max_batched_tokens: int
    max_num_seqs: int
    max_prefill_chunk: int
    swap: bool  # preempt by swap (else recompute)
    min_swap_tokens: int
    priority_update_interval: int
    preempt_margin: float
    device_prefix_cache: bool = False


@dataclass(slots=True)
class Budget:
    """This step's remaining token budget and batch slots; admission stops at the first misfit."""

    tokens: int
    seqs: int

    def has_room(self) -> bool:
        return self.tokens > 0 and self.seqs > 0

    def take(self, n: int) -> None:
        self.tokens -= n
        self.seqs -= 1


class Admission:
    """Owns the per-step admission of one worker: the token budget, the decision what runs, grows,
    starts, resumes or is preempted, and the fairness charge of prompt tokens.

    Called by the core's ``schedule`` once per worker iteration. Invariants: a step never
    exceeds its token budget or batch slots; a request computes only with blocks for every token
    it will hold; each prompt token is charged to its tenant once, however often recomputed.
    """

    def __init__(
        self,
        limits: AdmissionLimits,
        policy: Policy,
        *,
        table: RequestTable,
        waiting: WaitQueue,
        swaps: SwapController,
        host: HostCopies,
        placement: Placement,
        counters: Counters,
    ) -> None:
        self._limits = limits
        self._placement = placement
        self._host = host
        self._policy = policy
        self._table = table
        self._waiting = waiting
        self._swaps = swaps
        self._counters = counters

    def plan_step(self, slot: WorkerSlot, plan: StepPlan) -> None:
        """Adds this iteration's preemptions, computes and admissions for `slot` to `plan`."""
        budget = Budget(self._limits.max_batched_tokens, self._limits.max_num_seqs)
        if slot.iterations % self._limits.priority_update_interval == 0:
            self._preempt_for_rank(slot, plan)
        slot.iterations += 1
        self._schedule_running(slot, plan, budget)
        self._admit_waiting(slot, plan, budget)

    # -------------------------------------------------------------- preemption

    def _preempt_for_rank(self, slot: WorkerSlot, plan: StepPlan) -> None:
        """Preempts for the best-ranked waiting request only what fairness needs (the quantum
        rule of ``scheduler_svc.policy``): nothing while it would find a batch slot and blocks,
        only running requests it outranks by more than the quantum (``preempt_margin``), the
        cheapest to switch first (:meth:`_switch_cost`), and no more than it needs: a victim
        swapping out still holds its slot and blocks until the copy is done, but they are
        counted as freed here.

        A request whose swap-in has just completed is spared until it has computed once: its
        tenant's counter may have moved while it was copied in, and preempting it now would
        throw that swap-in away for nothing (a thrash, at every iteration when the quantum is 0).
        """
        head = self._best_waiting(slot)
        self._maybe_cancel_swap_outs(slot, head)
        if head is None or self._placement.leaves(slot, head):
            return  # nothing waits, or another worker takes it without a preemption
        need = self._admission_blocks(slot, head)
        leaving = slot.blocks_leaving()
        staying = sum(1 for r in slot.running.values() if r.status != Status.SWAPPING_OUT)
        if not self._lacks(slot, staying, leaving, need):
            return  # it finds room: no victim is costed (the common step)
        quantum = self._limits.preempt_margin
        allowed = sorted(
            (
                r
                for r in slot.running.values()
                if self._preemptible(slot, r)
                and not r.just_swapped_in
                and self._policy.outranks(head, r, quantum)
            ),
            key=lambda r: self._switch_cost(slot, r),
        )
        for victim in allowed:
            if not self._lacks(slot, staying, leaving, need):
                return
            leaving += slot.allocator.num_blocks_of(victim.seq)
            staying -= 1
            self._preempt(slot, victim, plan)

    def _lacks(self, slot: WorkerSlot, staying: int, leaving: int, need: int) -> bool:
        """The head lacks a batch slot (counting `staying` requests) or blocks (counting the
        `leaving` ones as free)."""
        return staying >= self._limits.max_num_seqs or slot.allocator.num_free + leaving < need

    def _switch_cost(self, slot: WorkerSlot, req: Request) -> tuple[float, ...]:
        """What preempting `req` costs, compared in order: the blocks it moves (a swap copies out
        those its host copy lacks and later copies all of them back in; a recompute prefills
        them again), its block runs (each one copy in block-group mode), then fewer tokens left
        last (a request about to finish frees its slot soon without any switch), then the
        policy's rank, lowest-ranked first."""
        held = slot.allocator.num_blocks_of(req.seq)
        moved = held + (self._swaps.blocks_to_copy_out(slot, req) if self._swaps_out(req) else 0)
        left = req.limits.max_tokens - len(req.output_ids) + _remaining(req)
        rank = tuple(-k for k in self._policy.sort_key(req))
        return (moved, len(slot.allocator.table(req.seq)), -left, *rank)

    def _swaps_out(self, req: Request) -> bool:
        """Whether a preemption of `req` swaps it (else it is recomputed)."""
        return self._limits.swap and req.num_computed >= max(1, self._limits.min_swap_tokens)

    def _maybe_cancel_swap_outs(self, slot: WorkerSlot, head: Request | None) -> None:
        """Rule 3: a request still swapping out that would now run keeps its blocks."""
        margin = self._limits.preempt_margin
        for req in list(slot.running.values()):
            if req.status != Status.SWAPPING_OUT:
                continue
            if head is not None and self._policy.outranks(head, req, margin):
                continue
            if slot.allocator.num_free < len(slot.running):
                continue  # memory is still short: let it go
            req.status = Status.RUNNING
            if req.swap_sent:
                slot.cancel_swap_out.append(req.seq)
            log.debug("swap-out cancelled", extra={"seq": req.seq})

    def _best_waiting(self, slot: WorkerSlot) -> Request | None:
        best = None
        for req in self._waiting:
            if req.num_tokens + 1 > slot.info.capacity_tokens:
                continue
            if best is None or self._policy.sort_key(req) < self._policy.sort_key(best):
                best = req
        return best

    @staticmethod
    def _preemptible(slot: WorkerSlot, req: Request) -> bool:
        """Running here, computing, and no copy in flight on its blocks."""
        return req.seq in slot.running and req.status == Status.RUNNING and not req.swap_sent

    def _preempt(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        req.preemptions += 1
        self._counters.preemptions += 1
        if self._swaps_out(req):
            self._counters.swap_preemptions += 1
            self._swaps.begin_swap_out(slot, req, plan)
        else:
            self._counters.recompute_preemptions += 1
            self._preempt_recompute(slot, req, plan)

    def _preempt_recompute(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        """Preempts by recompute: drop the worker's state and KV, requeue the token ids."""
        slot.allocator.free(req.seq)
        del slot.running[req.seq]
        plan.drop.append(req.seq)
        plan.start = [s for s in plan.start if s.seq != req.seq]
        plan.append = [a for a in plan.append if a.seq != req.seq]
        self._swaps.requeue_for_recompute(req)

    # ---------------------------------------------------------------- running

    def _schedule_running(self, slot: WorkerSlot, plan: StepPlan, budget: Budget) -> None:
        ranked = sorted(slot.running.values(), key=self._policy.sort_key)
        ahead = slot.sampling_ahead()
        for i, req in enumerate(ranked):
            if req.seq not in slot.running or req.status != Status.RUNNING:
                continue  # preempted earlier in this loop, or swapping
            if not budget.has_room():
                break
            decode = req.decode_ready or req.seq in ahead
            if req.seq in ahead and _may_be_last(slot, req):
                continue  # the token still being sampled may be its last: nothing to decode
            n = 1 if decode else min(_remaining(req), budget.tokens)
            while not self._grow(slot, req, req.num_computed + n, plan):
                if slot.blocks_leaving():
                    break  # blocks are on their way back from a swap-out (rule 1): wait
                victim = next(
                    (v for v in reversed(ranked[i + 1 :]) if self._preemptible(slot, v)), req
                )
                if not self._preemptible(slot, victim):
                    break
                self._preempt(slot, victim, plan)
                if victim is req:
                    break
            if req.seq not in slot.running or req.status != Status.RUNNING:
                continue
            if slot.allocator.num_blocks_of(req.seq) < slot.info.blocks_for(req.num_computed + n):
                continue  # waits for blocks being swapped out
            self._add_compute(req, n, plan, decode=decode)
            budget.take(n)

    def _grow(self, slot: WorkerSlot, req: Request, num_tokens: int, plan: StepPlan) -> bool:
        """Ensures `req` owns blocks for `num_tokens` tokens; False (nothing changed) if short."""
        need = slot.info.blocks_for(num_tokens) - slot.allocator.num_blocks_of(req.seq)
        if need <= 0:
            return True
        runs = slot.allocator.allocate(req.seq, need)
        if runs is None:
            return False
        plan.append.append(BlockAppend(req.seq, tuple(runs)))
        return True

    def _add_compute(self, req: Request, n: int, plan: StepPlan, *, decode: bool) -> None:
        """`req` computes `n` tokens in `plan`: a decode (of the token the worker sampled last,
        possibly in the plan still running) or its next prefill chunk."""
        req.just_swapped_in = False
        if decode:
            plan.decode.append(req.seq)
            req.num_computed += 1
            return
        start = req.num_computed
        stop = start + n
        plan.prefill.append(
            PrefillChunk(req.seq, tuple(req.token_at(start, stop)), stop == req.num_tokens)
        )
        req.num_computed = stop
        # Fairness charges each prompt token once, however often it is recomputed.
        upto = min(stop, len(req.prompt_ids))
        if upto > req.prompt_charged:
            self._policy.on_served(req.tenant, upto - req.prompt_charged, 0)
            self._table.tallies[req.tenant].prompt_tokens += upto - req.prompt_charged
            req.prompt_charged = upto

    # ---------------------------------------------------------------- waiting

    def _admission_blocks(self, slot: WorkerSlot, req: Request) -> int:
        if req.status == Status.SWAPPED:
            return slot.info.blocks_for(req.num_computed)
        first = min(req.num_tokens, self._limits.max_prefill_chunk, self._limits.max_batched_tokens)
        return slot.info.blocks_for(first)

    def _admit_waiting(self, slot: WorkerSlot, plan: StepPlan, budget: Budget) -> None:
        """Admits waiting and swapped requests in placement's order (``scheduler_svc.placement``:
        the policy's, near-ties by cache locality), skipping those left for another worker,
        until the budget or batch slots run out or one does not fit."""
        if not self._waiting:
            return
        just_dropped = set(plan.drop)
        ready = [
            req
            for req in self._waiting.rank(self._policy.sort_key)
            if req.seq not in just_dropped
            and not req.deferred
            and req.num_tokens + 1 <= slot.info.capacity_tokens  # else it fits another worker
        ]
        placing = self._placement.begin(slot, ready)
        admitted: set[int] = set()
        for req in placing.order:
            if not budget.has_room() or len(slot.running) >= self._limits.max_num_seqs:
                break
            if placing.leave(req):
                continue
            if not self._admit(slot, req, plan, budget):
                break  # the best-ranked waiting request does not fit: stop, keep the order
            admitted.add(req.seq)
            placing.admitted(req)
        if not admitted and not plan.has_compute:
            # Nothing computes here this step: take the best request left for another worker
            # rather than idle.
            for req in placing.fallback()[:1]:
                if self._admit(slot, req, plan, budget):
                    admitted.add(req.seq)
                    placing.admitted(req)
        placing.finish(admitted)
        self._waiting.remove_all(admitted)

    def _admit(self, slot: WorkerSlot, req: Request, plan: StepPlan, budget: Budget) -> bool:
        if req.status == Status.SWAPPED:
            self._recheck_host_hit(slot, req)  # may turn it into a fresh start
        if req.status == Status.SWAPPED:
            return self._resume(slot, req)
        return self._start(slot, req, plan, budget)

    def _recheck_host_hit(self, slot: WorkerSlot, req: Request) -> None:
        """A new prompt's host hit, decided again on this worker: declined (the request starts
        afresh) when the device holds enough of it (``SwapController.fetch_still_pays``). A
        preempted request's swap-in is not questioned, and costs no device match here."""
        if req.swap_outs or req.output_ids:
            return
        full = req.num_computed // slot.info.block_size
        device = len(self._device_prefix(slot, req, full))
        if not self._swaps.fetch_still_pays(req, device):
            self._swaps.decline_fetch(req, device)

    def _expected_blocks(self, slot: WorkerSlot, req: Request) -> int:
        total = min(len(req.prompt_ids) + req.limits.max_tokens, slot.info.max_model_len)
        return slot.info.blocks_for(total)

    def _device_prefix(self, slot: WorkerSlot, req: Request, max_blocks: int) -> list[int]:
        """The worker's cached blocks for the head of `req`'s tokens (at most `max_blocks`)."""
        if not self._limits.device_prefix_cache or max_blocks <= 0:
            return []
        return slot.allocator.match(self._host.hashes(req, max_blocks))

    def _start(self, slot: WorkerSlot, req: Request, plan: StepPlan, budget: Budget) -> bool:
        bs = slot.info.block_size
        fresh = req.num_computed == 0  # new or recomputed (a WAITING request always is)
        prefix = self._device_prefix(slot, req, shareable_blocks(req, bs) if fresh else 0)
        computed = len(prefix) * bs if prefix else req.num_computed
        n = min(req.num_tokens - computed, budget.tokens, self._limits.max_prefill_chunk)
        slot.allocator.share(req.seq, prefix)
        runs = slot.allocator.allocate(
            req.seq,
            slot.info.blocks_for(computed + n) - len(prefix),
            expected_total=self._expected_blocks(slot, req),
        )
        if runs is None:
            slot.allocator.free(req.seq)  # gives the shared prefix back
            return False
        if prefix:
            req.num_computed = computed
            reused = min(computed, len(req.prompt_ids))
            # Fairness charges computed work, not cache hits (as for a host hit).
            req.prompt_charged = max(req.prompt_charged, reused)
            req.device_cached_tokens = max(req.device_cached_tokens, reused)
            req.cached_prompt_tokens = max(req.cached_prompt_tokens, req.device_cached_tokens)
            self._count_hit(len(prefix), bs)
        _place(slot, req, Status.RUNNING)
        plan.start.append(
            SeqStart(
                seq=req.seq,
                sampling=req.sampling,
                position=req.num_computed,
                last_token=None,
                num_generated=len(req.output_ids),
                blocks=slot.allocator.table(req.seq),
            )
        )
        self._add_compute(req, n, plan, decode=False)
        budget.take(n)
        return True

    def _resume(self, slot: WorkerSlot, req: Request) -> bool:
        """Swap-in: device blocks now, the SeqStart + SwapIn once the host copy is pinned; the
        blocks this worker holds cached are shared, and only the rest is copied in."""
        bs = slot.info.block_size
        need = slot.info.blocks_for(req.num_computed)
        prefix = self._device_prefix(slot, req, min(need - 1, req.num_computed // bs))
        slot.allocator.share(req.seq, prefix)
        runs = slot.allocator.allocate(
            req.seq, need - len(prefix), expected_total=self._expected_blocks(slot, req)
        )
        if runs is None:
            slot.allocator.free(req.seq)
            return False
        if prefix:
            # A retained (host) hit served partly from the device: that part is the device's.
            device = min(len(prefix) * bs, req.cached_prompt_tokens)
            req.device_cached_tokens = max(req.device_cached_tokens, device)
            self._count_hit(len(prefix), bs)
        _place(slot, req, Status.SWAPPING_IN)
        self._swaps.begin_swap_in(req)
        return True

    def _count_hit(self, num_blocks: int, block_size: int) -> None:
        self._counters.device_hit_blocks += num_blocks
        self._counters.device_hit_tokens += num_blocks * block_size


def _place(slot: WorkerSlot, req: Request, status: Status) -> None:
    req.status = status
    req.worker_id = slot.worker_id
    req.resident = True
    slot.running[req.seq] = req


def _remaining(req: Request) -> int:
    return req.num_tokens - req.num_computed


def _may_be_last(slot: WorkerSlot, req: Request) -> bool:
    """Whether the token `req` samples in the plan still running may end it by length (a stop
    token cannot be foreseen: a plan made ahead then decodes once in vain)."""
    return (
        len(req.output_ids) + 1 >= req.limits.max_tokens
        or req.num_tokens + 1 >= slot.info.max_model_len
    )
