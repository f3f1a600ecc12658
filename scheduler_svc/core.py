"""The scheduler core: request table, queues, per-worker planning. Plain code, no gRPC.

One iteration for one worker (``schedule``) reads as::

    plan   = drops owed to the worker
           + running requests, best-ranked first (decode, or the next prefill chunk)
           + waiting requests admitted while the step's token budget, batch slots and blocks last
    output = the worker runs the plan                       (outside the core)
    events = update_from_output(worker, output)             (tokens, finishes, errors)

The core owns every worker's block-group allocator: a worker never decides what it allocates.
Capacity is asked before it is taken; when a running request needs a block and none is free, the
lowest-ranked running request of that worker is preempted (recompute: its KV is dropped and its
token ids are prefilled again later; KV is a cache, never the only copy).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from scheduler_svc.block_groups import BlockGroupAllocator
from scheduler_svc.plan import BlockAppend, PrefillChunk, SeqStart, StepOutput, StepPlan
from scheduler_svc.policy import Policy
from scheduler_svc.request import (
    FinishReason,
    GenerationLimits,
    Request,
    Sampling,
    Status,
    TokenEvent,
)
from scheduler_svc.workers import WorkerInfo, WorkerSlot

log = logging.getLogger(__name__)


class SchedulingError(ValueError):
    """A request that cannot be accepted; the message says why."""


class CapacityError(SchedulingError):
    """A request that can never fit (context or device memory)."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    max_batched_tokens: int = 512
    max_num_seqs: int = 64
    max_prefill_chunk: int = 512
    growth_allowance: int = 4
    max_waiting: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_batched_tokens", "max_num_seqs", "max_prefill_chunk", "max_waiting"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.growth_allowance < 0:
            raise ValueError(f"growth_allowance must be >= 0, got {self.growth_allowance}")


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


class SchedulerCore:
    def __init__(
        self,
        config: CoreConfig,
        policy: Policy,
        *,
        eos_token_ids: Iterable[int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.policy = policy
        self.counters = Counters()
        self._eos = frozenset(eos_token_ids)
        self._clock = clock
        self._seqs = itertools.count(1)
        self._requests: dict[str, Request] = {}
        self._by_seq: dict[int, Request] = {}
        self._waiting: list[Request] = []
        self._workers: dict[str, WorkerSlot] = {}
        self._live_per_tenant: dict[str, int] = {}

    # ------------------------------------------------------------------ workers

    def add_worker(self, info: WorkerInfo) -> WorkerSlot:
        if info.worker_id in self._workers:
            raise SchedulingError(f"worker {info.worker_id!r} has already joined")
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
    ) -> Request:
        """Queues a validated request. Raises SchedulingError if it can never be served here."""
        if request_id is None or not request_id:
            request_id = uuid.uuid4().hex
        if request_id in self._requests:
            raise SchedulingError(f"request id {request_id!r} is already in use")
        if len(self._waiting) >= self.config.max_waiting:
            raise CapacityError(f"the queue is full ({self.config.max_waiting} waiting requests)")
        need = len(prompt_ids) + limits.max_tokens
        if self._workers:
            largest = max(w.info.capacity_tokens for w in self._workers.values())
            if need > largest:
                raise CapacityError(
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
        )
        self._requests[request_id] = req
        self._by_seq[req.seq] = req
        if self._live_per_tenant.get(tenant, 0) == 0:
            self.policy.on_activate(tenant, self._live_per_tenant)
        self._live_per_tenant[tenant] = self._live_per_tenant.get(tenant, 0) + 1
        self._waiting.append(req)
        return req

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def cancel(self, request_id: str) -> TokenEvent | None:
        """Cancels a live request: its blocks are freed now and the worker told to forget it."""
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
            self._by_seq.pop(req.seq, None)

    # ---------------------------------------------------------------- planning

    def has_work(self, worker_id: str) -> bool:
        slot = self._workers.get(worker_id)
        return slot is not None and bool(slot.running or slot.pending_drop or self._waiting)

    def schedule(self, worker_id: str) -> StepPlan | None:
        """The next plan for `worker_id`, or None when it has nothing to do."""
        slot = self._workers[worker_id]
        plan = StepPlan(step_id=slot.next_step_id, drop=slot.take_drops())
        budget = _Budget(self.config.max_batched_tokens, self.config.max_num_seqs)
        self._schedule_running(slot, plan, budget)
        self._admit_waiting(slot, plan, budget)
        if plan.is_empty:
            return None
        slot.next_step_id += 1
        now = self._clock()
        for seq in itertools.chain(plan.decode, (c.seq for c in plan.prefill)):
            req = self._by_seq[seq]
            if req.first_scheduled_s is None:
                req.first_scheduled_s = now
        return plan

    def _schedule_running(self, slot: WorkerSlot, plan: StepPlan, budget: _Budget) -> None:
        ranked = sorted(slot.running.values(), key=self.policy.sort_key)
        for i, req in enumerate(ranked):
            if req.seq not in slot.running:
                continue  # preempted earlier in this loop
            if not budget.has_room():
                break
            n = 1 if req.decode_ready else min(self._remaining(req), budget.tokens)
            while not self._grow(slot, req, req.num_computed + n, plan):
                victim = next((v for v in reversed(ranked[i + 1 :]) if v.seq in slot.running), None)
                self._preempt(slot, victim or req, plan)
                if victim is None:
                    break
            if req.seq not in slot.running:
                continue
            self._add_compute(req, n, plan)
            budget.take(n)

    def _admit_waiting(self, slot: WorkerSlot, plan: StepPlan, budget: _Budget) -> None:
        if not self._waiting:
            return
        self._waiting.sort(key=self.policy.sort_key)
        admitted: list[Request] = []
        preempted = set(plan.drop)
        for req in self._waiting:
            if not budget.has_room():
                break
            if req.seq in preempted:
                continue
            if req.num_tokens + 1 > slot.info.capacity_tokens:
                continue  # fits another worker only
            n = min(self._remaining(req), budget.tokens, self.config.max_prefill_chunk)
            expected = min(len(req.prompt_ids) + req.limits.max_tokens, slot.info.max_model_len)
            runs = slot.allocator.allocate(
                req.seq,
                slot.info.blocks_for(req.num_computed + n),
                expected_total=slot.info.blocks_for(expected),
            )
            if runs is None:
                break  # the best-ranked waiting request does not fit: stop, keep the order
            req.status = Status.RUNNING
            req.worker_id = slot.worker_id
            req.resident = True
            slot.running[req.seq] = req
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
            admitted.append(req)
        if admitted:
            taken = {r.seq for r in admitted}
            self._waiting = [r for r in self._waiting if r.seq not in taken]

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
            req.prompt_charged = upto

    def _preempt(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        """Preempts by recompute: drop the worker's state and KV, requeue the token ids."""
        slot.allocator.free(req.seq)
        del slot.running[req.seq]
        plan.drop.append(req.seq)
        self._remove_from_plan(req.seq, plan)
        self._reset_for_recompute(req)
        req.preemptions += 1
        self.counters.preemptions += 1
        self.counters.recomputes += 1
        self._waiting.append(req)

    @staticmethod
    def _remove_from_plan(seq: int, plan: StepPlan) -> None:
        plan.start = [s for s in plan.start if s.seq != seq]
        plan.append = [a for a in plan.append if a.seq != seq]

    def _reset_for_recompute(self, req: Request) -> None:
        req.status = Status.WAITING
        req.worker_id = None
        req.resident = False
        req.decode_ready = False
        req.num_computed = 0
        req.recomputes += 1

    # ------------------------------------------------------------------ results

    def update_from_output(self, worker_id: str, output: StepOutput) -> list[TokenEvent]:
        """Applies a worker's step result: new tokens, finishes, per-sequence errors."""
        slot = self._workers.get(worker_id)
        if slot is None:
            return []
        now = self._clock()
        slot.steps += 1
        slot.step_s_total += output.step_s
        slot.forward_s_total += output.forward_s
        slot.idle_s_total += output.idle_s
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
        if req.worker_id is not None:
            slot = self._workers.get(req.worker_id)
            if slot is not None and slot.running.pop(req.seq, None) is not None:
                slot.allocator.free(req.seq)
                if req.resident:
                    slot.pending_drop.append(req.seq)
        if req.status == Status.WAITING:
            self._waiting = [r for r in self._waiting if r.seq != req.seq]
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.finished_s = self._clock()
        req.resident = False
        if reason is FinishReason.CANCELLED:
            self.counters.cancelled += 1
        elif reason is FinishReason.ABORTED:
            self.counters.failed += 1
        else:
            self.counters.finished += 1
        left = self._live_per_tenant.get(req.tenant, 1) - 1
        self._live_per_tenant[req.tenant] = left

    # -------------------------------------------------------------------- stats

    def num_waiting(self) -> int:
        return len(self._waiting)

    def num_running(self) -> int:
        return sum(len(w.running) for w in self._workers.values())

    def tenants(self) -> dict[str, tuple[int, int]]:
        """tenant -> (waiting, running)."""
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
                assert not req.is_finished, f"finished request {seq} still running"
                assert seq not in seen, f"request {seq} on two workers"
                seen.add(seq)
                need = slot.info.blocks_for(req.num_computed)
                assert slot.allocator.num_blocks_of(seq) >= need, f"request {seq} lacks blocks"
            for owner in slot.allocator.owners():
                assert owner in slot.running, f"blocks owned by non-running {owner}"
        for req in self._waiting:
            assert req.status == Status.WAITING and req.seq not in seen, f"bad waiting {req.seq}"


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
