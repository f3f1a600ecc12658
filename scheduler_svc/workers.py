"""The scheduler's view of its workers: each one's device blocks (the scheduler owns their
allocation), the requests resident on it, and what its next plan must tell it regardless of new
work; and the registry of workers that have joined."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from scheduler_svc.block_groups import BlockGroupAllocator
from scheduler_svc.errors import AlreadyExists, FailedPrecondition
from scheduler_svc.fetch_cost import NOT_MEASURED, DeviceCosts, mean_costs
from scheduler_svc.plan import SeqStart, StepPlan, SwapOrder
from scheduler_svc.request import Request, Status
from scheduler_svc.stats import Counters, WorkerStats

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    num_blocks: int
    block_size: int
    block_bytes: int
    max_model_len: int
    device: str = "cpu"
    address: str | None = None
    costs: DeviceCosts = NOT_MEASURED  # measured at its start

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class InFlight:
    """A plan sent to a worker whose result has not come back: the tokens each sequence
    computes in it, and the sequences that sample a token in it."""

    step_id: int
    computes: dict[int, int]  # seq -> tokens whose KV the step writes
    samples: frozenset[int]

    @classmethod
    def of(cls, plan: StepPlan) -> InFlight:
        computes = {seq: 1 for seq in plan.decode}
        computes.update((c.seq, len(c.token_ids)) for c in plan.prefill)
        samples = frozenset(plan.decode) | {c.seq for c in plan.prefill if c.sample}
        return cls(plan.step_id, computes, samples)


@dataclass(slots=True)
class WorkerSlot:
    """One worker as the scheduler sees it. Invariant: its allocator's owners are exactly the
    requests in ``running`` (resident here, whatever their status), and each owns blocks for at
    least the tokens it has computed."""

    info: WorkerInfo
    allocator: BlockGroupAllocator
    # Requests whose state lives on this worker, by seq, in admission order.
    running: dict[int, Request] = field(default_factory=dict)
    # Sequences the worker must forget in its next plan (finished, cancelled, preempted).
    pending_drop: list[int] = field(default_factory=list)
    # Swap orders ready for the next plan (their host side is reserved or pinned).
    swap_out_orders: list[SwapOrder] = field(default_factory=list)
    swap_in_orders: list[tuple[SeqStart, SwapOrder]] = field(default_factory=list)
    cancel_swap_out: list[int] = field(default_factory=list)
    # Sequences whose swap order was sent and not yet reported done.
    swaps_in_flight: set[int] = field(default_factory=set)
    # Plans sent and not yet answered, oldest first (two at most: asynchronous scheduling
    # plans the next step while one runs).
    in_flight: deque[InFlight] = field(default_factory=deque)
    iterations: int = 0
    next_step_id: int = 0
    steps: int = 0
    step_s_total: float = 0.0
    forward_s_total: float = 0.0
    idle_s_total: float = 0.0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    def take_drops(self) -> list[int]:
        drops, self.pending_drop = self.pending_drop, []
        return drops

    def take_swap_orders(self, plan: StepPlan) -> None:
        """Moves the swap orders whose host side is ready (and cancellations) into `plan`."""
        plan.swap_out, self.swap_out_orders = self.swap_out_orders, []
        for start, order in self.swap_in_orders:
            plan.start.append(start)
            plan.swap_in.append(order)
        self.swap_in_orders = []
        plan.cancel_swap_out, self.cancel_swap_out = self.cancel_swap_out, []
        self.swaps_in_flight.update(o.seq for o in plan.swap_out)
        self.swaps_in_flight.update(o.seq for o in plan.swap_in)

    def sampling_ahead(self) -> frozenset[int]:
        """The sequences that sample in a plan still running: planned now, their next token is
        the one that plan samples (the worker feeds it itself)."""
        return self.in_flight[-1].samples if self.in_flight else frozenset()

    def unreported(self, seq: int) -> int:
        """Tokens of `seq` whose KV plans still running write (not yet reported computed)."""
        return sum(f.computes.get(seq, 0) for f in self.in_flight)

    def blocks_leaving(self) -> int:
        """Device blocks that come back once the swap-outs in progress are reported done."""
        return sum(
            self.allocator.num_blocks_of(r.seq)
            for r in self.running.values()
            if r.status == Status.SWAPPING_OUT
        )

    def stats(self) -> WorkerStats:
        alloc = self.allocator.stats()
        return WorkerStats(
            worker_id=self.worker_id,
            device=self.info.device,
            num_blocks=self.info.num_blocks,
            free_blocks=alloc.num_free,
            largest_free_run=alloc.largest_free_run,
            running=len(self.running),
            steps=self.steps,
            step_s_total=self.step_s_total,
            forward_s_total=self.forward_s_total,
            idle_s_total=self.idle_s_total,
            swap_out_bytes=self.swap_out_bytes,
            swap_in_bytes=self.swap_in_bytes,
            prefill_tokens_per_s=self.info.costs.prefill_tokens_per_s,
            copy_latency_s=self.info.costs.copy_latency_s,
            copy_bytes_per_s=self.info.costs.copy_bytes_per_s,
        )

    def check_integrity(self) -> None:
        self.allocator.check_integrity()
        assert len(self.in_flight) <= 2, f"{len(self.in_flight)} plans in flight"
        for seq, req in self.running.items():
            assert req.seq == seq and req.worker_id == self.worker_id, f"bad residency {seq}"
            if req.status == Status.RUNNING:
                assert self.unreported(seq) <= req.num_computed, f"{seq} computes unplanned KV"
            assert not req.is_finished or req.swap_sent or req.offloading, f"{seq} finished"
            need = self.info.blocks_for(req.num_computed)
            assert self.allocator.num_blocks_of(seq) >= need, f"request {seq} lacks blocks"
            prefix = self.allocator.prefix_hashes(seq)
            if prefix:  # the device tier: shared blocks hold this request's own content
                assert prefix == req.hashes[: len(prefix)], f"request {seq} shares another's KV"
                assert len(prefix) * self.info.block_size <= req.num_computed, (
                    f"request {seq} shares blocks it has not computed past"
                )
        for owner in self.allocator.owners():
            assert owner in self.running, f"blocks owned by non-running {owner}"


class WorkerRegistry:
    """Owns the workers that have joined, by id, and the block size they all share (content
    addresses depend on it). Called by the core when a worker joins or leaves, and by every part
    that needs the slot a request is resident on. Invariant: no request is resident on two
    workers."""

    def __init__(self, growth_allowance: int, counters: Counters | None = None) -> None:
        self._growth_allowance = growth_allowance
        self._counters = counters if counters is not None else Counters()
        self._slots: dict[str, WorkerSlot] = {}
        self.block_size: int | None = None

    def add(self, info: WorkerInfo) -> WorkerSlot:
        """A new worker with an empty allocator. AlreadyExists or FailedPrecondition (nothing
        changed) for a taken id or another block size."""
        if info.worker_id in self._slots:
            raise AlreadyExists(f"worker {info.worker_id!r} has already joined")
        if self.block_size is not None and info.block_size != self.block_size:
            raise FailedPrecondition(
                f"worker {info.worker_id!r} uses {info.block_size}-token blocks; the others "
                f"use {self.block_size} (content addresses depend on it)"
            )
        self.block_size = info.block_size
        allocator = BlockGroupAllocator(
            info.num_blocks, growth_allowance=self._growth_allowance, on_evict=self._on_evict
        )
        slot = WorkerSlot(info, allocator)
        self._slots[info.worker_id] = slot
        log.info("worker joined", extra={"worker": info.worker_id, "blocks": info.num_blocks})
        return slot

    def _on_evict(self, num_blocks: int) -> None:
        self._counters.device_evicted_blocks += num_blocks

    def pop(self, worker_id: str) -> WorkerSlot | None:
        return self._slots.pop(worker_id, None)

    def get(self, worker_id: str) -> WorkerSlot | None:
        return self._slots.get(worker_id)

    def __getitem__(self, worker_id: str) -> WorkerSlot:
        return self._slots[worker_id]

    def slot_of(self, req: Request | None) -> WorkerSlot | None:
        """The slot `req` is resident on, if any."""
        if req is None or req.worker_id is None:
            return None
        return self._slots.get(req.worker_id)

    def slots(self) -> dict[str, WorkerSlot]:
        return self._slots

    def __iter__(self) -> Iterator[WorkerSlot]:
        return iter(self._slots.values())

    def __bool__(self) -> bool:
        return bool(self._slots)

    def costs(self) -> tuple[DeviceCosts | None, int]:
        """The joined workers' measured costs averaged (None: none measured), and the bytes
        of one block (0 before any worker joined)."""
        slots = list(self._slots.values())
        block_bytes = slots[0].info.block_bytes if slots else 0
        return mean_costs(s.info.costs for s in slots), block_bytes

    def largest_capacity(self) -> int | None:
        """The most tokens one worker's KV holds; None before any worker joined."""
        return max((w.info.capacity_tokens for w in self._slots.values()), default=None)

    def check_integrity(self) -> set[int]:
        """Checks every slot; returns the seqs resident somewhere."""
        seen: set[int] = set()
        for slot in self._slots.values():
            slot.check_integrity()
            assert not seen & slot.running.keys(), "a request on two workers"
            seen.update(slot.running)
        return seen
