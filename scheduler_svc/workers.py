"""The scheduler's view of one worker: its device blocks (the scheduler owns their allocation),
the requests resident on it, and what its next plan must tell it regardless of new work."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler_svc.block_groups import BlockGroupAllocator
from scheduler_svc.plan import SeqStart, SwapOrder
from scheduler_svc.request import Request


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    num_blocks: int
    block_size: int
    block_bytes: int
    max_model_len: int
    device: str = "cpu"
    address: str = ""

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


@dataclass(slots=True)
class WorkerSlot:
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
