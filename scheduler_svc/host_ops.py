"""Host-memory requests the scheduler core needs from the KV store, as plain data.

The core is synchronous and never waits on the network: when it preempts by swap or resumes a
swapped request, it queues a HostOp; the frontend's host agent runs it against the KV store and
hands the answer back (``on_reserved``, ``on_pinned``, ``on_host_failed``). Until then the request
simply waits in its transitional state. An answer names the op it answers (its seq and its
ticket): one for a swap given up since is released, never applied to the next one.

    preempt (swap)   RESERVE n host blocks ──▶ on_reserved  ──▶ SwapOut in the next plan
    resume           PIN the host copy      ──▶ on_pinned    ──▶ SeqStart + SwapIn in the next plan
    finish / stale   FREE host blocks, RELEASE leases (no answer needed)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from scheduler_svc.plan import RunCopy


class HostOpKind(enum.Enum):
    RESERVE = "reserve"
    PIN = "pin"
    FREE = "free"
    RELEASE = "release"


class HostOp(NamedTuple):
    kind: HostOpKind
    seq: int
    num_blocks: int = 0
    blocks: tuple[int, ...] = ()
    lease_id: str | None = None  # RELEASE
    # PIN: expected content, parallel to blocks (None: a private block); FREE: hashes
    hashes: tuple[bytes | None, ...] = ()
    ticket: int = 0  # RESERVE, PIN: the request's swap_ticket when the op was queued


def pair_runs(device_ids: Sequence[int], host_ids: Sequence[int]) -> list[RunCopy]:
    """Pairs device and host block ids (same order, same length) into maximal runs that are
    contiguous on both sides: one copy each. A block group against one host extent is one copy."""
    if len(device_ids) != len(host_ids):
        raise ValueError(f"{len(device_ids)} device blocks vs {len(host_ids)} host blocks")
    copies: list[RunCopy] = []
    i = 0
    n = len(device_ids)
    while i < n:
        j = i + 1
        while (
            j < n and device_ids[j] == device_ids[j - 1] + 1 and host_ids[j] == host_ids[j - 1] + 1
        ):
            j += 1
        copies.append(RunCopy(device_ids[i], host_ids[i], j - i))
        i = j
    return copies
