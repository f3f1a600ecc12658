"""The device prefix cache of one worker: content-addressed blocks that outlive their request.

A finished request's full blocks keep their content hash (``prefix_hash.py``: parent, token ids,
tenant salt) and stay in the pool as *cached* blocks. A later request on the same worker shares
its longest cached prefix read-only, reference counted, with zero copies::

    hashes    h0 ── h1 ── h2          (a chain: each block names its whole prefix)
                     └─── h2'         (two prompts that part after block 1)
    refs      2     2     1    0      (h2' is evictable: no request holds it)

* A cached block with ``refs == 0`` is *evictable*: free to take, holding content until taken.
  One with ``refs > 0`` is shared by that many requests and is never evicted.
* Eviction takes the least recently used evictable *leaf* first (a block no cached block
  continues), so a chain shrinks from its end and every cached block's parent stays cached:
  a match walks from the root, and a block whose parent is gone could never be found again.
  A block whose children all went becomes a leaf with its own last-use time.
* The cache never writes a block and never allocates one; ``BlockGroupAllocator`` owns the
  pool and hands blocks in (``insert``) and takes them back (``evict``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class CachedBlock:
    block: int
    hash: bytes
    parent: int | None  # the cached block holding the previous hash of the chain
    refs: int = 0
    children: int = 0
    tick: int = 0  # last use (release or insert): eviction takes the smallest


class DeviceCache:
    """Cached blocks by hash and by block id, their reference counts and the eviction order.

    Invariants (``check_integrity``): the two indexes agree; a parent is cached and counts its
    children; ``num_evictable`` counts the entries with no references; every evictable leaf is
    in the eviction heap under its current tick (stale heap entries are skipped on pop).
    """

    def __init__(self) -> None:
        self._by_hash: dict[bytes, int] = {}
        self._entries: dict[int, CachedBlock] = {}
        self._heap: list[tuple[int, int]] = []  # (tick, block) of evictable leaves, lazily pruned
        self._tick = 0
        self.num_evictable = 0

    # ----------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, block: object) -> bool:
        return block in self._entries

    def blocks(self) -> list[int]:
        return list(self._entries)

    def entry(self, block: int) -> CachedBlock:
        return self._entries[block]

    def block_of(self, h: bytes) -> int | None:
        return self._by_hash.get(h)

    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """The blocks of the longest cached prefix of ``hashes`` (nothing changes)."""
        out: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is None:
                break
            out.append(block)
        return out

    # ---------------------------------------------------------------- changing

    def acquire(self, blocks: Iterable[int]) -> None:
        """A request starts sharing ``blocks``: they cannot be evicted until released."""
        for b in blocks:
            e = self._entries[b]
            if e.refs == 0:
                self.num_evictable -= 1
            e.refs += 1

    def release(self, blocks: Iterable[int]) -> None:
        """A request stops sharing ``blocks``; the last one out makes them evictable."""
        for b in blocks:
            e = self._entries[b]
            assert e.refs > 0, f"release of unshared cached block {b}"
            e.refs -= 1
            if e.refs == 0:
                self.num_evictable += 1
                self._touch(e)

    def insert(self, block: int, h: bytes, parent: int | None) -> bool:
        """Caches ``block`` (no references) under ``h``; False (nothing changes) when ``h`` is
        cached already: the caller frees its duplicate block instead."""
        if h in self._by_hash:
            return False
        assert block not in self._entries, f"block {block} cached twice"
        e = CachedBlock(block, h, parent)
        if parent is not None:
            self._entries[parent].children += 1
        self._by_hash[h] = block
        self._entries[block] = e
        self.num_evictable += 1
        self._touch(e)
        return True

    def evict(self) -> int | None:
        """Forgets the least recently used evictable leaf; its block id (None: none left)."""
        while self._heap:
            tick, block = heapq.heappop(self._heap)
            e = self._entries.get(block)
            if e is None or e.tick != tick or e.refs or e.children:
                continue  # stale: used, continued or evicted since it was pushed
            self._remove(e)
            return block
        return None

    def drop(self, hashes: Iterable[bytes]) -> list[int]:
        """Forgets the unshared blocks cached under ``hashes`` and everything that continues
        them (their content is not to be trusted); the block ids forgotten, leaves first."""
        out: list[int] = []
        for h in hashes:
            block = self._by_hash.get(h)
            if block is not None and self._entries[block].refs == 0:
                out.extend(self._drop_subtree(block))
        return out

    # --------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        assert len(self._by_hash) == len(self._entries), "cache indexes differ in size"
        children: dict[int, int] = {}
        evictable = 0
        for b, e in self._entries.items():
            assert e.block == b and self._by_hash.get(e.hash) == b, f"cached block {b} misfiled"
            assert e.refs >= 0, f"cached block {b} has {e.refs} references"
            if e.parent is not None:
                assert e.parent in self._entries, f"parent of cached block {b} is gone"
                children[e.parent] = children.get(e.parent, 0) + 1
                # Whoever shares a block shares its whole prefix.
                assert self._entries[e.parent].refs >= e.refs, f"cached block {b} outshared"
            evictable += e.refs == 0
        for b, e in self._entries.items():
            assert e.children == children.get(b, 0), f"children of cached block {b} miscounted"
        assert evictable == self.num_evictable, "evictable count drifted"
        in_heap = set(self._heap)
        for e in self._entries.values():
            if e.refs == 0 and e.children == 0:
                assert (e.tick, e.block) in in_heap, f"evictable leaf {e.block} not in the heap"

    # ----------------------------------------------------------------- private

    def _touch(self, e: CachedBlock) -> None:
        self._tick += 1
        e.tick = self._tick
        if e.refs == 0 and e.children == 0:
            heapq.heappush(self._heap, (e.tick, e.block))

    def _remove(self, e: CachedBlock) -> None:
        assert e.refs == 0 and e.children == 0, f"cached block {e.block} is not an evictable leaf"
        del self._entries[e.block]
        del self._by_hash[e.hash]
        self.num_evictable -= 1
        if e.parent is not None:
            p = self._entries[e.parent]
            p.children -= 1
            if p.children == 0 and p.refs == 0:
                heapq.heappush(self._heap, (p.tick, p.block))

    def _drop_subtree(self, block: int) -> list[int]:
        kids = [b for b, e in self._entries.items() if e.parent == block]
        out: list[int] = []
        for k in kids:
            out.extend(self._drop_subtree(k))
        self._remove(self._entries[block])
        out.append(block)
        return out
