"""Per-request state kept by the scheduler: the one place a request's truth lives.

Life cycle (docs/architecture.md)::

    WAITING ──admit──▶ RUNNING (prefilling ⇄ decoding) ──▶ FINISHED
       ▲                  │  ▲
       │ recompute        │  └──────── SWAPPING_IN ◀── SWAPPED ◀── SWAPPING_OUT ◀┘ (swap)
       └──────────────────┘

KV is a cache: ``prompt_ids + output_ids`` are always enough to rebuild a request from nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple


class Status(enum.IntEnum):
    """Ordered so that ``status >= Status.FINISHED`` means done."""

    WAITING = 0
    RUNNING = 1
    SWAPPING_OUT = 2
    SWAPPED = 3
    SWAPPING_IN = 4
    FINISHED = 5


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"  # only the client's own doing: Cancel, or it left
    ABORTED = "aborted"  # a server fault: ``Request.fault`` says which, ``finish_message`` why


class Fault(enum.Enum):
    """Why an ABORTED request ended, which is the status its stream ends with (servicer.py):
    never CANCELLED, which is kept for the client's own cancel."""

    UNAVAILABLE = "unavailable"  # the scheduler is shutting down, or nothing can run it
    ABORTED = "aborted"  # an internal failure (a worker's error on this request)


@dataclass(frozen=True, slots=True)
class Sampling:
    """What a worker needs to sample a request's tokens (validated at the edge)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationLimits:
    max_tokens: int
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False


@dataclass(slots=True)
class Request:
    """Mutable state of one request. ``seq`` is its numeric handle on the step stream."""

    request_id: str
    seq: int
    tenant: str
    prompt_ids: list[int]
    sampling: Sampling
    limits: GenerationLimits
    arrival_s: float
    priority: int = 0
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    worker_id: str | None = None
    # Tokens of prompt_ids + output_ids whose KV is in the worker's pool.
    num_computed: int = 0
    # The worker holds this request's execution state (SeqStart sent, no drop since).
    resident: bool = False
    # The worker sampled the newest token itself, so the next step may simply decode it.
    decode_ready: bool = False
    # Prompt tokens already charged to the tenant by the fairness policy.
    prompt_charged: int = 0
    # Host copy of the KV (rule 5: stays valid after a swap-in): host block ids in block-table
    # order, and how many leading tokens they hold. Only whole blocks are reused later.
    host_blocks: list[int] = field(default_factory=list)
    host_tokens: int = 0
    # An in-flight swap: its store lease, the host blocks it writes, tokens it covers, and
    # whether its order went to the worker (then device blocks stay until it is reported done).
    swap_lease: str | None = None
    swap_host_blocks: list[int] = field(default_factory=list)
    swap_tokens: int = 0
    swap_sent: bool = False
    # Which host reserve or pin is this request's current one: an answer carries the ticket of
    # the op it answers, so a late answer to a swap given up since (rule 3, a worker that died,
    # a recompute) is never taken for the swap that followed it (whose sizes differ).
    swap_ticket: int = 0
    # Content addresses of the full blocks of prompt + output (a prefix of them, cached), the
    # hash of each host block (None = private), and retention of a finished request's KV.
    hashes: list[bytes] = field(default_factory=list)
    host_hashes: list[bytes | None] = field(default_factory=list)
    # An offload of its first block's content is still being copied: its retained prefix is
    # matched once that is committed, and it is not admitted before (host_copies.py).
    deferred: bool = False
    offloading: bool = False
    # Waits that cache-aware placement caused it (left for another worker, overtaken in its
    # band), and the worker it was last left for (scheduler_svc.placement).
    locality_waits: int = 0
    left_for: str | None = None
    # Its swap-in completed and it has not computed since (rank preemption spares it).
    just_swapped_in: bool = False
    # Retain the KV when it finishes, with this ttl (0: no expiry); None: free it at once.
    retain_ttl_s: float | None = None
    finish_reason: FinishReason | None = None
    finish_message: str | None = None
    fault: Fault | None = None  # set with finish_reason ABORTED
    # Timing and counters, reported in RequestMetrics.
    first_scheduled_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_s: float | None = None
    preemptions: int = 0
    swap_outs: int = 0
    swap_ins: int = 0
    recomputes: int = 0
    cached_prompt_tokens: int = 0  # reused, not computed: from the host or the device tier
    device_cached_tokens: int = 0  # the part of cached_prompt_tokens shared on the device

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status >= Status.FINISHED

    def token_at(self, start: int, stop: int) -> list[int]:
        """Token ids ``[start, stop)`` of prompt + output, without building the whole list."""
        n_prompt = len(self.prompt_ids)
        if stop <= n_prompt:
            return self.prompt_ids[start:stop]
        if start >= n_prompt:
            return self.output_ids[start - n_prompt : stop - n_prompt]
        return self.prompt_ids[start:] + self.output_ids[: stop - n_prompt]


class TokenEvent(NamedTuple):
    """New tokens of a request from one step; ``finished`` is set on its last event."""

    request: Request
    token_ids: tuple[int, ...]
    finished: bool
