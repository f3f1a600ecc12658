"""The worker's step as plain data: the plan it executes, and the result it sends back.

These mirror ``proto/worker.proto`` field for field; ``convert.py`` translates at the stream's
edge (proto's empty defaults become None here), so the executor and its tests never touch
protobuf. Plans carry deltas, never whole tables: a ``SeqStart`` creates a sequence's execution
state, a ``BlockAppend`` adds blocks to its table, and a decode names only the sequence (the
engine keeps its last token and position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from servekit.runs import BlockRun

__all__ = [
    "BlockAppend",
    "BlockRun",
    "CommittedBlocks",
    "PrefillChunk",
    "RunCopy",
    "Sampling",
    "SeqError",
    "SeqStart",
    "StepPlan",
    "StepResult",
    "StepTiming",
    "SwapIn",
    "SwapOut",
    "WorkerHello",
]


class RunCopy(NamedTuple):
    """``count`` blocks from device block ``device_start`` to/from host block ``host_start``."""

    device_start: int
    host_start: int
    # Shadows tuple.count() on purpose, as servekit.runs.BlockRun's does: the proto's name.
    count: int  # type: ignore[assignment]


class PrefillChunk(NamedTuple):
    """Prompt tokens of ``seq`` for its next positions; ``sample`` asks for the next token."""

    seq: int
    token_ids: Sequence[int]
    sample: bool


class Sampling(NamedTuple):
    """A sequence's sampling as the plan gives it. The executor validates it when the sequence
    starts (``worker_svc.sampling.SamplingParams``): a bad one fails that sequence only."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class SeqStart:
    """Creates ``seq``'s execution state. ``position > 0``: the KV of ``[0, position)`` is (or,
    after this step's swap-ins, will be) in ``blocks``."""

    seq: int
    sampling: Sampling = field(default_factory=Sampling)
    position: int = 0
    last_token: int | None = None
    num_generated: int = 0
    blocks: tuple[BlockRun, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockAppend:
    seq: int
    blocks: tuple[BlockRun, ...]


@dataclass(frozen=True, slots=True)
class SwapIn:
    """Copies host -> device for ``seq``; ``lease_id``: the store pin over the host blocks."""

    seq: int
    copies: tuple[RunCopy, ...]
    lease_id: str | None = None


@dataclass(frozen=True, slots=True)
class SwapOut:
    """Copies device -> host for ``seq`` into the store reservation ``lease_id``. Once written,
    the host blocks are committed under ``block_hashes`` (one per host block in copy order,
    None: a private block; empty: every block private), charged to ``tenant`` and retained
    for ``ttl_s`` (None: the store's defaults)."""

    seq: int
    copies: tuple[RunCopy, ...]
    lease_id: str | None = None
    block_hashes: tuple[bytes | None, ...] = ()
    tenant: str | None = None
    ttl_s: float | None = None


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One step, executed in this order: drop, start, append, swap-ins, swap-outs, cancels,
    then one forward over ``prefill`` and ``decode``."""

    step_id: int
    start: tuple[SeqStart, ...] = ()
    append: tuple[BlockAppend, ...] = ()
    swap_in: tuple[SwapIn, ...] = ()
    prefill: tuple[PrefillChunk, ...] = ()
    decode: tuple[int, ...] = ()
    swap_out: tuple[SwapOut, ...] = ()
    cancel_swap_out: tuple[int, ...] = ()
    drop: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StepTiming:
    forward_s: float = 0.0
    step_s: float = 0.0  # the step's time on the step thread
    swap_wait_s: float = 0.0  # time the step spent on copies before its forward
    idle_s: float = 0.0  # the step thread's wait for this plan after the previous step


class SeqError(NamedTuple):
    seq: int
    message: str


class CommittedBlocks(NamedTuple):
    """The host blocks that hold ``seq``'s swapped-out content after the commit (a duplicate of
    an already retained block is replaced by that block)."""

    seq: int
    blocks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step did. ``seqs`` and ``tokens`` are parallel (one sampled token each)."""

    step_id: int
    seqs: tuple[int, ...] = ()
    tokens: tuple[int, ...] = ()
    swap_out_done: tuple[int, ...] = ()
    swap_in_done: tuple[int, ...] = ()
    swap_out_cancelled: tuple[int, ...] = ()
    timing: StepTiming = field(default_factory=StepTiming)
    errors: tuple[SeqError, ...] = ()
    swap_out_bytes: int = 0
    swap_in_bytes: int = 0
    swap_copies: int = 0
    committed: tuple[CommittedBlocks, ...] = ()
    # finished copies whose commit failed (store refused or gone): device blocks intact
    swap_out_failed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerHello:
    """The first message of the step stream: who this worker is and what its pool holds."""

    worker_id: str
    model_fingerprint: str
    num_blocks: int
    block_size: int
    block_bytes: int
    max_model_len: int
    device: str
    address: str
    vocab_size: int
    # Measured at start (calibrate.py), for the scheduler's fetch-or-compute choice; 0: not.
    prefill_tokens_per_s: float = 0.0
    copy_latency_s: float = 0.0
    copy_bytes_per_s: float = 0.0
