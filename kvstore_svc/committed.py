"""Committed host blocks: the content index, tenant charges, pin counts and the retained blocks.

* COMMITTED blocks are either *hashed* (content-addressed: found by :meth:`Store.lookup`,
  deduplicated on commit, evictable) or *private* (empty hash: only their owner knows the id;
  never evicted, since handing a private block's id to another writer would let its owner read
  someone else's KV later; the owner drops it with :meth:`Store.free`).
* Pins are per-lease counts on committed blocks. A pinned block is never evicted or freed; a
  :meth:`Store.free` of a pinned block removes it from the index at once (no new readers) and
  returns it to the free space when its last pin ends.
* Hashed, unpinned committed blocks are *retained* (:mod:`kvstore_svc.retention`): the only
  evictable ones. A lookup hit, a duplicate commit and the end of the last pin count as a use
  (recency and ttl restart); a pinned block does not age.

The store decides *when* a block is committed, pinned, freed, evicted or expired (and logs
it); this part keeps its tables consistent. A block leaving for the free space goes back
through ``release``, the store's allocator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from kvstore_svc.errors import NotFound
from kvstore_svc.records import CommittedBlock
from kvstore_svc.retention import RetainedBlocks


class CommittedBlocks:
    """Committed blocks by id, their hash index, tenant charges, pins and retention orders."""

    def __init__(self, release: Callable[[int], None]) -> None:
        self._release = release
        self._blocks: dict[int, CommittedBlock] = {}
        self._index: dict[bytes, int] = {}  # hash -> committed block
        self._charged: dict[str, int] = {}  # tenant -> its indexed blocks (no zero entries)
        self._retained = RetainedBlocks()  # the evictable blocks
        self._pinned = 0
        self._evictions = 0
        self._expired = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: object) -> bool:
        return block in self._blocks

    def __iter__(self) -> Iterator[int]:
        return iter(self._blocks)

    @property
    def num_pinned(self) -> int:
        return self._pinned

    @property
    def num_retained(self) -> int:
        """Blocks that eviction may take."""
        return len(self._retained)

    @property
    def evictions(self) -> int:
        return self._evictions

    @property
    def expired_blocks(self) -> int:
        return self._expired

    def get(self, block: int) -> CommittedBlock | None:
        return self._blocks.get(block)

    def holder(self, block_hash: bytes) -> int | None:
        """The block indexed under ``block_hash``; ``None`` for none or an empty hash."""
        return self._index.get(block_hash) if block_hash else None

    def charged(self, tenant: str) -> int:
        """Indexed blocks charged to ``tenant``, pinned ones included."""
        return self._charged.get(tenant, 0)

    def charges(self) -> dict[str, int]:
        """Tenant -> charged blocks; one C-level copy, safe against the loop's writes."""
        return self._charged.copy()

    def oldest_retained(self) -> int | None:
        return self._retained.oldest()

    def check_pinnable(self, blocks: Sequence[int], block_hashes: Sequence[bytes]) -> None:
        """``NotFound`` unless every block is committed, not freed, and holds its hash
        (``block_hashes`` parallel to ``blocks``, or empty; an empty entry is not checked)."""
        expected = block_hashes or [b""] * len(blocks)
        for b, want in zip(blocks, expected, strict=True):
            cb = self._blocks.get(b)
            if cb is None or cb.freed:
                raise NotFound(f"block {b} is not committed")
            if want and cb.block_hash != want:
                raise NotFound(f"block {b} no longer holds hash {want.hex()[:32]}")

    def add(self, block: int, block_hash: bytes, tenant: str, ttl_s: float) -> None:
        """A newly committed block (not yet retained: see :meth:`retain`); a hashed one is
        indexed and charged to ``tenant``."""
        self._blocks[block] = CommittedBlock(block_hash, tenant, ttl_s if block_hash else 0.0)
        if block_hash:
            self._index[block_hash] = block
            self._charged[tenant] = self._charged.get(tenant, 0) + 1

    def retain(self, block: int, now: float) -> None:
        """An indexed, unpinned block becomes retained, as the most recently used."""
        cb = self._blocks[block]
        self._retained.add(block, cb.tenant, cb.ttl_s, now)

    def touch(self, block: int, now: float) -> None:
        """A use of ``block``: recency and ttl restart (no-op if pinned)."""
        self._retained.touch(block, now)

    def reuse(self, b: int, ttl_s: float, now: float) -> None:
        """A duplicate commit of committed block ``b``: a use, and the longer ttl wins."""
        cb = self._blocks[b]
        longer = 0.0 if not (cb.ttl_s and ttl_s) else max(cb.ttl_s, ttl_s)
        if longer == cb.ttl_s:
            self._retained.touch(b, now)
            return
        cb.ttl_s = longer
        if b in self._retained:
            self._retained.remove(b)
            self._retained.add(b, cb.tenant, longer, now)

    def pin(self, blocks: set[int]) -> None:
        """One more pin on each checked committed block: they stop being retained."""
        for b in blocks:
            cb = self._blocks[b]
            if cb.pins == 0:
                self._pinned += 1
                self._retained.remove(b)
            cb.pins += 1

    def unpin(self, b: int, now: float) -> None:
        """One pin less on ``b``; with its last pin a freed block goes back to the free space
        and a hashed one is retained (the pin was its last use)."""
        cb = self._blocks[b]
        cb.pins -= 1
        if cb.pins:
            return
        self._pinned -= 1
        if cb.freed:
            self._drop(b, cb)
        elif cb.block_hash:
            self._retained.add(b, cb.tenant, cb.ttl_s, now)

    def free(self, b: int) -> int:
        """Frees one block (1), or skips it (0) when it is not committed or already freed."""
        cb = self._blocks.get(b)
        if cb is None or cb.freed:
            return 0
        if cb.pins:
            cb.freed = True
            self._unindex(b, cb)
        else:
            self._drop(b, cb)
        return 1

    def evict(self, b: int) -> None:
        self._evictions += 1
        self._drop(b, self._blocks[b])

    def evict_over_quota(self, tenant: str, quota: int, keep: set[int]) -> bool:
        """Evicts the tenant's least recently used retained blocks, never those in ``keep``,
        until it is within ``quota``; True when it is still over (nothing more can go)."""
        while self._charged.get(tenant, 0) > quota:
            oldest = self._retained.oldest_of(tenant)
            # ``keep`` was used last: once the oldest is kept, every retained one is.
            if oldest is None or oldest in keep:
                return True
            self.evict(oldest)
        return False

    def expire(self, now: float) -> int:
        """Drops the retained blocks whose ttl has run out by ``now``; returns how many."""
        due = self._retained.due(now)
        for b in due:
            self._drop(b, self._blocks[b])
        if due:
            self._expired += len(due)
        return len(due)

    def check_integrity(self, pins: Mapping[int, int]) -> None:
        """``AssertionError`` unless the blocks carry ``pins`` (block -> pin leases on it) and
        the index, charges, retained blocks and pin count agree with the blocks."""
        evictable: dict[int, tuple[str, float]] = {}
        charged: dict[str, int] = {}
        for b, cb in self._blocks.items():
            assert cb.pins == pins.get(b, 0), (
                f"block {b}: {cb.pins} pins, leases say {pins.get(b, 0)}"
            )
            assert not cb.freed or cb.pins, f"freed block {b} kept without a pin"
            assert math.isfinite(cb.ttl_s) and cb.ttl_s >= 0, f"block {b}: ttl {cb.ttl_s}"
            assert cb.block_hash or not cb.ttl_s, f"private block {b} has a ttl"
            indexed = bool(cb.block_hash) and not cb.freed
            assert (self._index.get(cb.block_hash) == b) == indexed, f"index wrong for {b}"
            if indexed:
                charged[cb.tenant] = charged.get(cb.tenant, 0) + 1
            if indexed and not cb.pins:
                evictable[b] = (cb.tenant, cb.ttl_s)
        assert len(self._index) == sum(charged.values()), "index holds uncommitted blocks"
        assert self._charged == charged, f"tenant charges {self._charged} != {charged}"
        self._retained.check_integrity(evictable)
        assert self._pinned == sum(1 for cb in self._blocks.values() if cb.pins)

    def _unindex(self, b: int, cb: CommittedBlock) -> None:
        if cb.block_hash:
            del self._index[cb.block_hash]
            left = self._charged[cb.tenant] - 1
            if left:
                self._charged[cb.tenant] = left
            else:
                del self._charged[cb.tenant]
            self._retained.remove(b)

    def _drop(self, b: int, cb: CommittedBlock) -> None:
        """An unpinned committed block goes back to the free space."""
        if not cb.freed:
            self._unindex(b, cb)
        del self._blocks[b]
        self._release(b)
