"""The scheduler core: request table, queues, per-worker planning. Plain code, no gRPC.

One iteration for one worker (``schedule``) reads as::

    plan   = what the worker is owed (drops, swap orders whose host side is ready)
           + preemption by rank (every priority_update_interval iterations)
           + running requests, best-ranked first (decode, or the next prefill chunk)
           + waiting and swapped requests admitted while budget, batch slots and blocks last
    output = the worker runs the plan                       (outside the core)
    events = update_from_output(worker, output)             (tokens, swap completions, errors)

The core owns every worker's block-group allocator: a worker never decides what it allocates.
Capacity is asked before it is taken. Preemption is by swap (the KV goes to the host arena and
comes back later, possibly on another worker) or by recompute (the KV is dropped and the token ids
prefilled again). Context-switch rules (DESIGN.md):

1. a swapping-out request's device blocks are freed only once the worker reports the copy done;
2. a swapping-in request is in no forward until its swap-in is reported done;
3. a request chosen to run while still swapping out cancels the swap-out and keeps its blocks;
5. after a swap-in the host copy stays valid: the next swap-out copies only the blocks the host
   lacks (``kv_reuse``).

Host-memory work (reserve, pin, free) is queued as HostOps for the frontend to run (host_ops.py).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from scheduler_svc.block_groups import BlockGroupAllocator
from scheduler_svc.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
)
from scheduler_svc.host_ops import HostOp, HostOpKind
from scheduler_svc.plan import BlockAppend, PrefillChunk, SeqStart, StepOutput, StepPlan
from scheduler_svc.policy import Policy
from scheduler_svc.prefix_hash import chain_hashes, tenant_salt
from scheduler_svc.request import (
    FinishReason,
    GenerationLimits,
    LookupState,
    Request,
    Sampling,
    Status,
    TokenEvent,
)
from scheduler_svc.switching import ContextSwitching
from scheduler_svc.workers import WorkerInfo, WorkerSlot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    max_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_prefill_chunk: int = 512
    growth_allowance: int = 4
    max_waiting: int = 10_000
    # Context switching.
    preemption: str = "recompute"  # "swap" needs a KV store
    kv_reuse: bool = True
    min_swap_tokens: int = 32
    priority_update_interval: int = 4
    preempt_margin: float = 128.0
    # Retained KV: finished requests' blocks are offloaded and content-addressed, and new prompts
    # look up their longest retained prefix (needs swap preemption and kv_reuse).
    retain: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_batched_tokens",
            "max_num_seqs",
            "max_prefill_chunk",
            "max_waiting",
            "priority_update_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.growth_allowance < 0 or self.min_swap_tokens < 0 or self.preempt_margin < 0:
            raise ValueError("growth_allowance, min_swap_tokens and preempt_margin must be >= 0")
        if self.preemption not in ("swap", "recompute"):
            raise ValueError(f"preemption must be swap or recompute, got {self.preemption!r}")
        if self.retain and (self.preemption != "swap" or not self.kv_reuse):
            raise ValueError("retain needs preemption='swap' and kv_reuse")


@dataclass(slots=True)
class TenantTally:
    """Service a tenant has received since the scheduler started."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    finished: int = 0


@dataclass(slots=True)
class Counters:
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    preemptions: int = 0
    recomputes: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    reuse_hit_tokens: int = 0
    swap_bytes_avoided: int = 0
    retained_lookups: int = 0
    retained_hit_blocks: int = 0
    offloaded_blocks: int = 0


class SchedulerCore(ContextSwitching):
    def __init__(
        self,
        config: CoreConfig,
        policy: Policy,
        *,
        eos_token_ids: Iterable[int],
        clock: Callable[[], float] = time.monotonic,
        model_fingerprint: str = "",
        secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.block_size: int | None = None
        secret = secret if secret is not None else secrets.token_bytes(16)
        self._salts: dict[str, bytes] = {}
        self._salt_for = lambda tenant: self._salts.setdefault(
            tenant, tenant_salt(secret, tenant, model_fingerprint)
        )
        self.policy = policy
        self.counters = Counters()
        self._eos = frozenset(eos_token_ids)
        self._clock = clock
        self._seqs = itertools.count(1)
        self._requests: dict[str, Request] = {}
        self._by_seq: dict[int, Request] = {}
        # WAITING (never run, or recomputing) and SWAPPED requests, ranked at each admission.
        self._waiting: list[Request] = []
        self._workers: dict[str, WorkerSlot] = {}
        self._live_per_tenant: dict[str, int] = {}
        self._host_ops: list[HostOp] = []
        self.tallies: dict[str, TenantTally] = {}
        self._offloads_by_root: dict[bytes, int] = {}
        self._deferred_lookups: dict[bytes, list[Request]] = {}

    # ------------------------------------------------------------------ workers

    def add_worker(self, info: WorkerInfo) -> WorkerSlot:
        if info.worker_id in self._workers:
            raise AlreadyExists(f"worker {info.worker_id!r} has already joined")
        if self.block_size is not None and info.block_size != self.block_size:
            raise FailedPrecondition(
                f"worker {info.worker_id!r} uses {info.block_size}-token blocks; the others "
                f"use {self.block_size} (content addresses depend on it)"
            )
        self.block_size = info.block_size
        allocator = BlockGroupAllocator(
            info.num_blocks, growth_allowance=self.config.growth_allowance
        )
        slot = WorkerSlot(info, allocator)
        self._workers[info.worker_id] = slot
        log.info("worker joined", extra={"worker": info.worker_id, "blocks": info.num_blocks})
        return slot

    def remove_worker(self, worker_id: str) -> int:
        """Forgets a worker; its requests are queued again, to be recomputed. Returns how many."""
        slot = self._workers.pop(worker_id, None)
        if slot is None:
            return 0
        for req in list(slot.running.values()):
            if req.is_finished:
                self._end_offload(req)
                self._release_host_copy(req)
                continue
            self._clear_swap(req)  # its lease expires in the store
            self._reset_for_recompute(req)
            self._waiting.append(req)
        log.info("worker left", extra={"worker": worker_id, "requeued": len(slot.running)})
        return len(slot.running)

    @property
    def workers(self) -> Mapping[str, WorkerSlot]:
        return self._workers

    # ----------------------------------------------------------------- requests

    def submit(
        self,
        *,
        prompt_ids: list[int],
        sampling: Sampling,
        limits: GenerationLimits,
        tenant: str = "default",
        priority: int = 0,
        request_id: str | None = None,
        retain_ttl_s: float | None = None,
    ) -> Request:
        """Queues a validated request. Raises InvalidArgument (its id is taken) or
        ResourceExhausted (the queue is full, or it can never fit a worker)."""
        if request_id is None or not request_id:
            request_id = uuid.uuid4().hex
        if request_id in self._requests:
            raise InvalidArgument(f"request id {request_id!r} is already in use")
        if len(self._waiting) >= self.config.max_waiting:
            raise ResourceExhausted(
                f"the queue is full ({self.config.max_waiting} waiting requests)"
            )
        need = len(prompt_ids) + limits.max_tokens
        if self._workers:
            largest = max(w.info.capacity_tokens for w in self._workers.values())
            if need > largest:
                raise ResourceExhausted(
                    f"prompt ({len(prompt_ids)}) + max_tokens ({limits.max_tokens}) = {need} tokens"
                    f" exceed the largest worker's KV capacity of {largest} tokens"
                )
        req = Request(
            request_id=request_id,
            seq=next(self._seqs),
            tenant=tenant,
            prompt_ids=list(prompt_ids),
            sampling=sampling,
            limits=limits,
            arrival_s=self._clock(),
            priority=priority,
            retain_ttl_s=retain_ttl_s,
        )
        self._requests[request_id] = req
        self._by_seq[req.seq] = req
        if self._live_per_tenant.get(tenant, 0) == 0:
            self.policy.on_activate(tenant, self._live_per_tenant)
        self._live_per_tenant[tenant] = self._live_per_tenant.get(tenant, 0) + 1
        self.tallies.setdefault(tenant, TenantTally())
        self._waiting.append(req)
        if self.block_size is not None:
            self._begin_lookup(req)
        else:
            req.lookup = LookupState.DONE
        return req

    def retained_hashes(self, tenant: str, token_ids: list[int]) -> list[bytes]:
        """Content addresses of `token_ids`' full blocks for `tenant` (a conversation's KV)."""
        if self.block_size is None:
            return []
        return chain_hashes(token_ids, self.block_size, self._salt_for(tenant))

    def free_retained(self, tenant: str, token_ids: list[int]) -> int:
        """Drops the retained blocks of `token_ids` (a deleted conversation); how many asked."""
        hashes = tuple(self.retained_hashes(tenant, token_ids))
        if hashes and self.config.retain:
            self._host_ops.append(HostOp(HostOpKind.FREE, 0, hashes=hashes))
        return len(hashes) if self.config.retain else 0

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def cancel(self, request_id: str) -> TokenEvent | None:
        """Cancels a live request: its blocks are freed (after any copy in flight)."""
        req = self._requests.get(request_id)
        if req is None or req.is_finished:
            return None
        self._finish(req, FinishReason.CANCELLED)
        return TokenEvent(req, (), True)

    def set_priority(self, request_id: str, priority: int) -> bool:
        req = self._requests.get(request_id)
        if req is None or req.is_finished:
            return False
        req.priority = priority
        return True

    def forget(self, request_id: str) -> None:
        """Drops a finished request from the table (after its stream has ended)."""
        req = self._requests.get(request_id)
        if req is not None and req.is_finished:
            del self._requests[request_id]
            if not (req.swap_sent or req.offloading):
                self._by_seq.pop(req.seq, None)

    # ------------------------------------------------------------- host agent

    @property
    def has_host_ops(self) -> bool:
        return bool(self._host_ops)

    def take_host_ops(self) -> list[HostOp]:
        ops, self._host_ops = self._host_ops, []
        return ops

    # ---------------------------------------------------------------- planning

    def has_work(self, worker_id: str) -> bool:
        slot = self._workers.get(worker_id)
        return slot is not None and bool(
            slot.running or slot.pending_drop or self._waiting or slot.swaps_in_flight
        )

    def schedule(self, worker_id: str) -> StepPlan | None:
        """The next plan for `worker_id`, or None when it has nothing to do."""
        slot = self._workers[worker_id]
        plan = StepPlan(step_id=slot.next_step_id, drop=slot.take_drops())
        self._add_swap_orders(slot, plan)
        budget = _Budget(self.config.max_batched_tokens, self.config.max_num_seqs)
        if slot.iterations % self.config.priority_update_interval == 0:
            self._preempt_for_rank(slot, plan)
        slot.iterations += 1
        self._schedule_running(slot, plan, budget)
        self._admit_waiting(slot, plan, budget)
        if plan.is_empty and not slot.swaps_in_flight:
            return None
        slot.next_step_id += 1
        now = self._clock()
        for seq in itertools.chain(plan.decode, (c.seq for c in plan.prefill)):
            req = self._by_seq[seq]
            if req.first_scheduled_s is None:
                req.first_scheduled_s = now
        return plan

    def _add_swap_orders(self, slot: WorkerSlot, plan: StepPlan) -> None:
        plan.swap_out, slot.swap_out_orders = slot.swap_out_orders, []
        for start, order in slot.swap_in_orders:
            plan.start.append(start)
            plan.swap_in.append(order)
        slot.swap_in_orders = []
        plan.cancel_swap_out, slot.cancel_swap_out = slot.cancel_swap_out, []
        slot.swaps_in_flight.update(o.seq for o in plan.swap_out)
        slot.swaps_in_flight.update(o.seq for o in plan.swap_in)

    def _preempt_for_rank(self, slot: WorkerSlot, plan: StepPlan) -> None:
        """Preempts the lowest-ranked running requests while the best-ranked waiting one
        outranks them by more than the margin and lacks slots or blocks (issue: preemptive VTC).

        A request whose swap-in has just completed is spared until it has computed once: its
        tenant's counter may have moved while it was copied in, and preempting it now would
        throw that swap-in away for nothing (a thrash, at every iteration when the margin is 0).
        """
        head = self._best_waiting(slot)
        self._maybe_cancel_swap_outs(slot, head)
        if head is None:
            return
        running = sorted(
            (
                r
                for r in slot.running.values()
                if self._preemptible(slot, r) and not r.just_swapped_in
            ),
            key=self.policy.sort_key,
        )
        need = self._admission_blocks(slot, head)
        leaving = self._blocks_leaving(slot)
        margin = self.config.preempt_margin
        while running:
            victim = running[-1]
            slots_short = len(slot.running) >= self.config.max_num_seqs
            blocks_short = slot.allocator.num_free + leaving < need
            if not (slots_short or blocks_short) or not self.policy.outranks(head, victim, margin):
                return
            running.pop()
            leaving += slot.allocator.num_blocks_of(victim.seq)
            self._preempt(slot, victim, plan)

    def _maybe_cancel_swap_outs(self, slot: WorkerSlot, head: Request | None) -> None:
        """Rule 3: a request still swapping out that would now run keeps its blocks."""
        margin = self.config.preempt_margin
        for req in list(slot.running.values()):
            if req.status != Status.SWAPPING_OUT:
                continue
            if head is not None and self.policy.outranks(head, req, margin):
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
            if best is None or self.policy.sort_key(req) < self.policy.sort_key(best):
                best = req
        return best

    def _schedule_running(self, slot: WorkerSlot, plan: StepPlan, budget: _Budget) -> None:
        ranked = sorted(slot.running.values(), key=self.policy.sort_key)
        for i, req in enumerate(ranked):
            if req.seq not in slot.running or req.status != Status.RUNNING:
                continue  # preempted earlier in this loop, or swapping
            if not budget.has_room():
                break
            n = 1 if req.decode_ready else min(self._remaining(req), budget.tokens)
            while not self._grow(slot, req, req.num_computed + n, plan):
                if self._blocks_leaving(slot):
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
            self._add_compute(req, n, plan)
            budget.take(n)

    def _preemptible(self, slot: WorkerSlot, req: Request) -> bool:
        """Running here, computing, and no copy in flight on its blocks."""
        return req.seq in slot.running and req.status == Status.RUNNING and not req.swap_sent

    def _blocks_leaving(self, slot: WorkerSlot) -> int:
        return sum(
            slot.allocator.num_blocks_of(r.seq)
            for r in slot.running.values()
            if r.status == Status.SWAPPING_OUT
        )

    def _admission_blocks(self, slot: WorkerSlot, req: Request) -> int:
        if req.status == Status.SWAPPED:
            return slot.info.blocks_for(req.num_computed)
        first = min(req.num_tokens, self.config.max_prefill_chunk, self.config.max_batched_tokens)
        return slot.info.blocks_for(first)

    def _admit_waiting(self, slot: WorkerSlot, plan: StepPlan, budget: _Budget) -> None:
        if not self._waiting:
            return
        self._waiting.sort(key=self.policy.sort_key)
        admitted: set[int] = set()
        just_dropped = set(plan.drop)
        for req in self._waiting:
            if not budget.has_room() or len(slot.running) >= self.config.max_num_seqs:
                break
            if req.seq in just_dropped or req.lookup in (
                LookupState.PENDING,
                LookupState.DEFERRED,
            ):
                continue
            if req.num_tokens + 1 > slot.info.capacity_tokens:
                continue  # fits another worker only
            ok = (
                self._resume(slot, req)
                if req.status == Status.SWAPPED
                else (self._start(slot, req, plan, budget))
            )
            if not ok:
                break  # the best-ranked waiting request does not fit: stop, keep the order
            admitted.add(req.seq)
        if admitted:
            self._waiting = [r for r in self._waiting if r.seq not in admitted]

    def _expected_blocks(self, slot: WorkerSlot, req: Request) -> int:
        total = min(len(req.prompt_ids) + req.limits.max_tokens, slot.info.max_model_len)
        return slot.info.blocks_for(total)

    def _start(self, slot: WorkerSlot, req: Request, plan: StepPlan, budget: _Budget) -> bool:
        n = min(self._remaining(req), budget.tokens, self.config.max_prefill_chunk)
        runs = slot.allocator.allocate(
            req.seq,
            slot.info.blocks_for(req.num_computed + n),
            expected_total=self._expected_blocks(slot, req),
        )
        if runs is None:
            return False
        self._place(slot, req, Status.RUNNING)
        plan.start.append(
            SeqStart(
                seq=req.seq,
                sampling=req.sampling,
                position=0,
                last_token=None,
                num_generated=len(req.output_ids),
                blocks=tuple(runs),
            )
        )
        self._add_compute(req, n, plan)
        budget.take(n)
        return True

    def _resume(self, slot: WorkerSlot, req: Request) -> bool:
        """Swap-in: device blocks now, the SeqStart + SwapIn once the host copy is pinned."""
        runs = slot.allocator.allocate(
            req.seq,
            slot.info.blocks_for(req.num_computed),
            expected_total=self._expected_blocks(slot, req),
        )
        if runs is None:
            return False
        self._place(slot, req, Status.SWAPPING_IN)
        self._host_ops.append(
            HostOp(
                HostOpKind.PIN,
                req.seq,
                blocks=tuple(req.host_blocks),
                hashes=tuple(req.host_hashes),
            )
        )
        self.counters.swap_ins += 1
        req.swap_ins += 1
        return True

    def _place(self, slot: WorkerSlot, req: Request, status: Status) -> None:
        req.status = status
        req.worker_id = slot.worker_id
        req.resident = True
        slot.running[req.seq] = req

    def _remaining(self, req: Request) -> int:
        return req.num_tokens - req.num_computed

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

    def _add_compute(self, req: Request, n: int, plan: StepPlan) -> None:
        req.just_swapped_in = False
        if req.decode_ready:
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
            self.policy.on_served(req.tenant, upto - req.prompt_charged, 0)
            self.tallies[req.tenant].prompt_tokens += upto - req.prompt_charged
            req.prompt_charged = upto

    # -------------------------------------------------------------- preemption

    def _preempt(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        req.preemptions += 1
        self.counters.preemptions += 1
        if self.config.preemption == "swap" and req.num_computed >= max(
            1, self.config.min_swap_tokens
        ):
            self._begin_swap_out(slot, req, plan)
        else:
            self._preempt_recompute(slot, req, plan)

    def _preempt_recompute(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        """Preempts by recompute: drop the worker's state and KV, requeue the token ids."""
        slot.allocator.free(req.seq)
        del slot.running[req.seq]
        plan.drop.append(req.seq)
        self._remove_from_plan(req.seq, plan)
        self._release_host_copy(req)
        self._reset_for_recompute(req)
        self._waiting.append(req)

    @staticmethod
    def _remove_from_plan(seq: int, plan: StepPlan) -> None:
        plan.start = [s for s in plan.start if s.seq != seq]
        plan.append = [a for a in plan.append if a.seq != seq]

    def _reset_for_recompute(self, req: Request) -> None:
        self._release_host_copy(req)
        req.status = Status.WAITING
        req.worker_id = None
        req.resident = False
        req.decode_ready = False
        req.num_computed = 0
        req.recomputes += 1
        self.counters.recomputes += 1

    def _slot_of(self, req: Request | None) -> WorkerSlot | None:
        if req is None or req.worker_id is None:
            return None
        return self._workers.get(req.worker_id)

    # ------------------------------------------------------------------ results

    def update_from_output(self, worker_id: str, output: StepOutput) -> list[TokenEvent]:
        """Applies a worker's step result: swap completions, new tokens, per-sequence errors."""
        slot = self._workers.get(worker_id)
        if slot is None:
            return []
        now = self._clock()
        slot.steps += 1
        slot.step_s_total += output.step_s
        slot.forward_s_total += output.forward_s
        slot.idle_s_total += output.idle_s
        slot.swap_out_bytes += output.swap_out_bytes
        slot.swap_in_bytes += output.swap_in_bytes
        self.counters.swap_out_bytes += output.swap_out_bytes
        self.counters.swap_in_bytes += output.swap_in_bytes
        self._apply_swap_results(slot, output)
        events: list[TokenEvent] = []
        for seq, message in output.errors.items():
            req = self._by_seq.get(seq)
            if req is not None and not req.is_finished and req.worker_id == worker_id:
                req.finish_message = message
                self._finish(req, FinishReason.ABORTED)
                events.append(TokenEvent(req, (), True))
        for seq, token in output.sampled.items():
            req = self._by_seq.get(seq)
            if req is None or req.is_finished or req.worker_id != worker_id:
                continue  # cancelled or moved while the step ran
            req.output_ids.append(token)
            req.decode_ready = True
            req.token_times.append(now)
            self.policy.on_served(req.tenant, 0, 1)
            self.tallies[req.tenant].output_tokens += 1
            reason = self._finish_reason(req, token, slot.info.max_model_len)
            if reason is not None:
                self._finish(req, reason)
            events.append(TokenEvent(req, (token,), reason is not None))
        return events

    def _finish_reason(self, req: Request, token: int, max_model_len: int) -> FinishReason | None:
        if token in req.limits.stop_token_ids or (token in self._eos and not req.limits.ignore_eos):
            return FinishReason.STOP
        if len(req.output_ids) >= req.limits.max_tokens or req.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, req: Request, reason: FinishReason) -> None:
        slot = self._slot_of(req)
        if slot is not None and req.seq in slot.running:
            if req.swap_sent:
                # A copy is reading or writing its device blocks: they go when it is done.
                if req.status == Status.SWAPPING_OUT:
                    slot.cancel_swap_out.append(req.seq)
            elif (
                reason in (FinishReason.STOP, FinishReason.LENGTH)
                and req.status == Status.RUNNING
                and self._begin_offload(slot, req)
            ):
                pass  # its blocks go once the offload is copied (rule 1), then are retained
            else:
                slot.running.pop(req.seq)
                slot.allocator.free(req.seq)
                if req.resident:
                    slot.pending_drop.append(req.seq)
                if req.swap_lease:
                    self._host_ops.append(
                        HostOp(HostOpKind.RELEASE, req.seq, lease_id=req.swap_lease)
                    )
        if req.status in (Status.WAITING, Status.SWAPPED):
            self._waiting = [r for r in self._waiting if r.seq != req.seq]
        if not (req.swap_sent or req.offloading):
            self._release_host_copy(req)  # else once the copy is over
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.finished_s = self._clock()
        req.resident = req.resident and (req.swap_sent or req.offloading)
        if reason is FinishReason.CANCELLED:
            self.counters.cancelled += 1
        elif reason is FinishReason.ABORTED:
            self.counters.failed += 1
        else:
            self.counters.finished += 1
        self.tallies[req.tenant].finished += 1
        self._live_per_tenant[req.tenant] = self._live_per_tenant.get(req.tenant, 1) - 1

    # -------------------------------------------------------------------- stats

    def num_waiting(self) -> int:
        return sum(1 for r in self._waiting if r.status == Status.WAITING)

    def num_swapped(self) -> int:
        return sum(1 for r in self._waiting if r.status == Status.SWAPPED) + sum(
            1
            for w in self._workers.values()
            for r in w.running.values()
            if r.status in (Status.SWAPPING_OUT, Status.SWAPPING_IN)
        )

    def num_running(self) -> int:
        return sum(
            1
            for w in self._workers.values()
            for r in w.running.values()
            if r.status == Status.RUNNING
        )

    def tenants(self) -> dict[str, tuple[int, int]]:
        """tenant -> (waiting or swapped, running)."""
        out: dict[str, tuple[int, int]] = {}
        for req in self._waiting:
            w, r = out.get(req.tenant, (0, 0))
            out[req.tenant] = (w + 1, r)
        for slot in self._workers.values():
            for req in slot.running.values():
                w, r = out.get(req.tenant, (0, 0))
                out[req.tenant] = (w, r + 1)
        return out

    def check_integrity(self) -> None:
        """Raises AssertionError if the request table, queues and allocators disagree."""
        seen: set[int] = set()
        for slot in self._workers.values():
            slot.allocator.check_integrity()
            for seq, req in slot.running.items():
                assert req.seq == seq and req.worker_id == slot.worker_id, f"bad residency {seq}"
                assert not req.is_finished or req.swap_sent or req.offloading, f"{seq} finished"
                assert seq not in seen, f"request {seq} on two workers"
                seen.add(seq)
                need = slot.info.blocks_for(req.num_computed)
                assert slot.allocator.num_blocks_of(seq) >= need, f"request {seq} lacks blocks"
            for owner in slot.allocator.owners():
                assert owner in slot.running, f"blocks owned by non-running {owner}"
        for req in self._waiting:
            assert req.status in (Status.WAITING, Status.SWAPPED), f"bad queued {req.seq}"
            assert req.seq not in seen, f"request {req.seq} both queued and placed"
            if req.status == Status.SWAPPED:
                assert req.host_blocks and req.host_tokens == req.num_computed, f"{req.seq}"


class _Budget:
    """This step's remaining token budget and batch slots; admission stops at the first misfit."""

    __slots__ = ("seqs", "tokens")

    def __init__(self, tokens: int, seqs: int) -> None:
        self.tokens = tokens
        self.seqs = seqs

    def has_room(self) -> bool:
        return self.tokens > 0 and self.seqs > 0

    def take(self, n: int) -> None:
        self.tokens -= n
        self.seqs -= 1
