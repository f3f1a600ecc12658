"""Leases: reservations and pins that end by themselves when their holder forgets them.

A lease holds host blocks for a while: a *reservation* holds blocks being written (free space
taken, invisible to lookups), a *pin* holds committed blocks being read (never evicted, never
freed). Either ends by ``Release``, by its expiry, or (a reservation) when its last block is
committed. The table only keeps leases and their expiry order; what ending a lease does to the
blocks is the store's business (``store.py``).
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum


class LeaseKind(StrEnum):
    RESERVATION = "reservation"
    PIN = "pin"


@dataclass(slots=True)
class Lease:
    """``blocks``: a reservation's reserved, not yet committed blocks; a pin's pinned blocks."""

    lease_id: str
    kind: LeaseKind
    owner: str
    expires_at: float
    blocks: set[int]


class LeaseTable:
    """Live leases by id, plus a heap of expiry times (entries of ended leases are skipped)."""

    def __init__(self, instance: str) -> None:
        self.instance = instance  # every lease id begins with it and a colon
        self._leases: dict[str, Lease] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._leases)

    def __iter__(self) -> Iterator[Lease]:
        return iter(self._leases.values())

    def open(self, kind: LeaseKind, owner: str, expires_at: float, blocks: set[int]) -> Lease:
        """A new lease with a fresh id: ``<instance>:<r|p>-<random>`` (ids of an earlier store
        process never match, and name the lifetime they belong to)."""
        prefix = "r" if kind is LeaseKind.RESERVATION else "p"
        lease_id = f"{self.instance}:{prefix}-{uuid.uuid4().hex}"
        lease = Lease(lease_id, kind, owner, expires_at, blocks)
        self._leases[lease.lease_id] = lease
        heapq.heappush(self._heap, (expires_at, lease.lease_id))
        return lease

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def close(self, lease: Lease) -> None:
        """Forgets the lease; its heap entry goes lazily (compacted when mostly dead)."""
        del self._leases[lease.lease_id]
        if len(self._heap) > 2 * len(self._leases) + 64:
            self._heap = [(x.expires_at, x.lease_id) for x in self._leases.values()]
            heapq.heapify(self._heap)

    def due(self, now: float) -> list[Lease]:
        """Live leases with ``expires_at <= now``, earliest first; the caller closes them."""
        out: list[Lease] = []
        while self._heap and self._heap[0][0] <= now:
            _, lease_id = heapq.heappop(self._heap)
            lease = self._leases.get(lease_id)
            if lease is not None:
                out.append(lease)
        return out

    def check_integrity(self) -> None:
        """Every live lease has a heap entry at its expiry time."""
        entries = set(self._heap)
        for lease in self._leases.values():
            assert (lease.expires_at, lease.lease_id) in entries, f"{lease.lease_id} not in heap"
