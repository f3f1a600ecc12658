"""A step plan: pure data that tells one worker what to do in one step, and what came back.

Plans carry deltas, never whole tables: a SeqStart creates a sequence's execution state on the
worker, BlockAppend adds blocks to its table, and decodes name only the sequence (the worker keeps
its last token and position). The servicer converts these to ``proto/worker.proto`` messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from scheduler_svc.request import Sampling
from servekit.runs import BlockRun


class SeqStart(NamedTuple):
    seq: int
    sampling: Sampling
    position: int
    last_token: int | None
    num_generated: int
    blocks: tuple[BlockRun, ...]


class BlockAppend(NamedTuple):
    seq: int
    blocks: tuple[BlockRun, ...]


class PrefillChunk(NamedTuple):
    seq: int
    token_ids: tuple[int, ...]
    sample: bool


@dataclass(frozen=True, slots=True)
class RunCopy:
    """`count` blocks copied between device blocks from `device_start` and host blocks from
    `host_start` (a dataclass: a NamedTuple's own ``count`` method would shadow the field)."""

    device_start: int
    host_start: int
    count: int


class SwapOrder(NamedTuple):
    """Copies for one sequence, device -> host (swap-out) or host -> device (swap-in)."""

    seq: int
    copies: tuple[RunCopy, ...]
    lease_id: str
    # Swap-out with retention: each host block's content hash (None: private), the tenant that
    # owns them and how long they stay (0: until evicted).
    block_hashes: tuple[bytes | None, ...] = ()
    tenant: str | None = None
    ttl_s: float | None = None


@dataclass(slots=True)
class StepPlan:
    step_id: int
    start: list[SeqStart] = field(default_factory=list)
    append: list[BlockAppend] = field(default_factory=list)
    swap_in: list[SwapOrder] = field(default_factory=list)
    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[int] = field(default_factory=list)
    swap_out: list[SwapOrder] = field(default_factory=list)
    cancel_swap_out: list[int] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)

    @property
    def has_compute(self) -> bool:
        return bool(self.prefill or self.decode)

    @property
    def is_empty(self) -> bool:
        return not (
            self.start
            or self.append
            or self.swap_in
            or self.prefill
            or self.decode
            or self.swap_out
            or self.cancel_swap_out
            or self.drop
        )

    @property
    def num_tokens(self) -> int:
        return len(self.decode) + sum(len(c.token_ids) for c in self.prefill)


@dataclass(frozen=True, slots=True)
class StepOutput:
    """A worker's answer to one plan."""

    step_id: int
    sampled: dict[int, int]
    swap_out_done: tuple[int, ...] = ()
    swap_in_done: tuple[int, ...] = ()
    swap_out_cancelled: tuple[int, ...] = ()
    errors: dict[int, str] = field(default_factory=dict)
    # seq -> the host blocks holding a finished swap-out after the store's commit
    committed: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # finished swap-out copies the store did not commit (refused, or the store is gone): the
    # device blocks are intact and the worker still holds the sequence
    swap_out_failed: tuple[int, ...] = ()
    forward_s: float = 0.0
    step_s: float = 0.0
    idle_s: float = 0.0
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
