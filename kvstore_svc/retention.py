"""Retained blocks: committed, content-addressed and unpinned, the only blocks the store may evict
or expire. The store decides *when* a block is retained; this keeps the orders.

Three views of the same blocks, each least recently used first::

    lru          all retained blocks           -> eviction when free space is short
    by tenant    one order per tenant          -> eviction when a tenant is over its quota
    by ttl       one order per ttl value       -> expiry: only each order's head can be due

Every view is the global order restricted to its blocks (add and touch append to every view
they belong to), and last uses never decrease along the global order (a use is stamped no
earlier than the newest one), so blocks of one ttl fall due in order: :meth:`due` looks at the
heads, never at every block. A ttl of 0 means no expiry: such blocks are in no ttl order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", str, float)


@dataclass(slots=True)
class _Entry:
    tenant: str
    ttl_s: float  # 0 = no expiry
    last_use: float


class RetainedBlocks:
    """The evictable blocks of a store with their tenant, ttl and last use."""

    def __init__(self) -> None:
        self._lru: OrderedDict[int, _Entry] = OrderedDict()
        self._by_tenant: dict[str, OrderedDict[int, None]] = {}
        self._by_ttl: dict[float, OrderedDict[int, None]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, block: object) -> bool:
        return block in self._lru

    def add(self, block: int, tenant: str, ttl_s: float, now: float) -> None:
        """``block`` becomes retained, as the most recently used."""
        assert block not in self._lru, f"block {block} already retained"
        self._lru[block] = _Entry(tenant, ttl_s, self._stamp(now))
        self._by_tenant.setdefault(tenant, OrderedDict())[block] = None
        if ttl_s:
            self._by_ttl.setdefault(ttl_s, OrderedDict())[block] = None

    def touch(self, block: int, now: float) -> None:
        """A use: ``block`` becomes the most recently used and its ttl restarts. No-op if not
        retained (pinned blocks do not age)."""
        entry = self._lru.get(block)
        if entry is None:
            return
        entry.last_use = self._stamp(now)
        self._lru.move_to_end(block)
        self._by_tenant[entry.tenant].move_to_end(block)
        if entry.ttl_s:
            self._by_ttl[entry.ttl_s].move_to_end(block)

    def remove(self, block: int) -> None:
        """``block`` is no longer retained (pinned, freed, evicted or expired). No-op if not."""
        entry = self._lru.pop(block, None)
        if entry is None:
            return
        _discard(self._by_tenant, entry.tenant, block)
        if entry.ttl_s:
            _discard(self._by_ttl, entry.ttl_s, block)

    def oldest(self) -> int | None:
        """The least recently used retained block."""
        return next(iter(self._lru), None)

    def oldest_of(self, tenant: str) -> int | None:
        """The tenant's least recently used retained block."""
        order = self._by_tenant.get(tenant)
        return next(iter(order)) if order else None

    def due(self, now: float) -> list[int]:
        """Blocks whose ttl has run out: ``last_use + ttl_s <= now``. Changes nothing."""
        out: list[int] = []
        for ttl_s, order in self._by_ttl.items():
            for block in order:
                if self._lru[block].last_use + ttl_s > now:
                    break
                out.append(block)
        return out

    def check_integrity(self, expected: Mapping[int, tuple[str, float]]) -> None:
        """``AssertionError`` unless the retained blocks are exactly ``expected`` (block ->
        (tenant, ttl)) and every view is the global order restricted to its blocks."""
        have = {b: (e.tenant, e.ttl_s) for b, e in self._lru.items()}
        assert have == dict(expected), "retained blocks differ from the evictable ones"
        uses = [e.last_use for e in self._lru.values()]
        assert uses == sorted(uses), "last uses out of order"
        for tenant, order in self._by_tenant.items():
            want = [b for b, e in self._lru.items() if e.tenant == tenant]
            assert order and list(order) == want, f"tenant {tenant!r} order wrong"
        assert set(self._by_tenant) == {e.tenant for e in self._lru.values()}
        for ttl_s, order in self._by_ttl.items():
            want = [b for b, e in self._lru.items() if e.ttl_s == ttl_s]
            assert ttl_s and order and list(order) == want, f"ttl {ttl_s} order wrong"
        assert set(self._by_ttl) == {e.ttl_s for e in self._lru.values() if e.ttl_s}

    def _stamp(self, now: float) -> float:
        """``now``, but never before the newest use (keeps every order sorted by last use)."""
        newest = next(reversed(self._lru.values()), None)
        return now if newest is None else max(now, newest.last_use)


def _discard(views: dict[K, OrderedDict[int, None]], key: K, block: int) -> None:
    order = views[key]
    del order[block]
    if not order:
        del views[key]
