"""The block-group allocator: device KV blocks of one worker, handed out in contiguous runs.

Owned by the scheduler, one per worker; the worker never decides allocation, it only
applies the block tables the scheduler sends. A block holds all layers' K and V (see
docs/architecture.md, "Memory layout"), so a *group* of ``g`` adjacent blocks is one contiguous
region and moves in one copy when its owner is swapped.

An owner (a request id, any hashable) holds groups in **block-table order** -- the order of
its token positions, not of block ids -- and at most one *reservation*: blocks right after
its last group, kept for its growth::

    block     0   1   2   3   4   5   6   7   8   9  10  11  12  13  14  15
             [A0  A1  A2 |B0  B1  b   b  |A3  a   a  |free                ]
    groups(A) = (BlockRun(0, 3), BlockRun(7, 1))   block_ids(A) = [0, 1, 2, 7]
    groups(B) = (BlockRun(3, 2),)                   block_ids(B) = [3, 4]
    a, b: reserved for A's and B's growth in place (still counted as free)

Policy of ``allocate(owner, n)``:

1. Grow in place: consume the owner's reservation, then any free blocks right after it.
2. The rest becomes one new group, best fit among free runs with room after it for the
   expected growth; that room is reserved for the owner, so that other owners' new groups
   are not placed right behind it and its later one-block growth stays in place.
3. If no free run holds the rest contiguously, reservations are *soft*: other owners'
   reservations are given back (oldest first) until one does; if none does, the rest is
   split into several smaller groups, largest first, down to single blocks -- never worse
   than per-block paging. Free runs coalesce on every release.

Cached blocks (the device prefix cache, ``device_cache.py``) share the pool with groups:

* ``free(owner, cache=hashes)`` keeps the owner's full blocks as *cached* blocks under their
  content hashes instead of releasing them (the rest is released and coalesces as before); a
  hash already cached is a duplicate, and its block is released.
* ``share(owner, blocks)`` starts a new owner with a cached prefix, read-only and reference
  counted: its block table is that *prefix* followed by its own groups. The prefix is not a
  group: it is never grown into, never reserved behind, and never copied by a swap-in.
  ``groups()`` and ``num_groups_of`` are the owner's own groups (the copies its private
  blocks cost); ``table()`` and ``block_ids()`` are the whole table, prefix first.
* To the free-space runs a cached block is a used block, so coalescing and growth in place
  never see it: a free run never contains one, and a reservation never covers one. Counting
  treats unshared cached blocks as free (``num_free`` includes them), and ``allocate`` takes
  truly free space first -- free runs and reservations, by the policy above -- and evicts only
  for the shortfall in *count*, least recently used leaves first (``DeviceCache.evict``); an
  evicted block is released and coalesces like any other. It never evicts for contiguity, and
  a block shared by any owner is never evicted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import pairwise
from typing import NamedTuple

from scheduler_svc.device_cache import DeviceCache
from servekit.runs import BlockRun, RunAllocator

__all__ = ["AllocatorStats", "BlockGroupAllocator", "BlockRun"]


class AllocatorStats(NamedTuple):
    """A snapshot of one allocator, for metrics and logs.

    ``num_free`` includes reserved blocks (any owner may end up with them);
    ``num_free_runs`` and ``largest_free_run`` describe the unreserved free space only.
    """

    num_blocks: int
    num_free: int
    num_owners: int
    num_groups: int
    num_free_runs: int
    largest_free_run: int
    num_reserved: int
    num_cached: int = 0  # cached blocks, shared or not (the unshared ones count as free)
    num_evictions: int = 0


class BlockGroupAllocator:
    """Allocates a worker's device blocks to owners as contiguous block groups.

    Contract:

    * ``allocate`` counts first: it returns ``None`` and changes nothing when fewer than the
      asked blocks are free (reserved blocks count as free); otherwise it always succeeds.
    * The runs it returns are the blocks *added*, in block-table order; the caller appends
      their blocks to the owner's block table in that order. A grow in place returns a run
      that continues the owner's last group, and ``groups()`` shows the two merged.
    * ``free(owner)`` gives back every block of the owner (and its reservation) at once;
      there is no partial free. Unknown owners are not an error: ``free``, ``groups`` and
      ``block_ids`` return empty results and ``num_blocks_of`` returns 0, so a cancel racing
      a finish needs no special case.
    * An owner exists from its first non-empty allocation until ``free``.
    """

    def __init__(
        self,
        num_blocks: int,
        *,
        growth_allowance: int = 4,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if growth_allowance < 0:
            raise ValueError(f"growth_allowance must be >= 0, got {growth_allowance}")
        self._runs = RunAllocator(num_blocks)
        self._growth_allowance = growth_allowance
        self._groups: dict[Hashable, list[BlockRun]] = {}
        self._counts: dict[Hashable, int] = {}
        self._reserved: dict[Hashable, BlockRun] = {}  # starts at the owner's last group's stop
        self._num_reserved = 0
        self._num_groups = 0
        self._cache = DeviceCache()
        self._prefix: dict[Hashable, list[int]] = {}  # shared cached blocks heading a table
        self._on_evict = on_evict
        self._num_evictions = 0

    # ----------------------------------------------------------------- queries

    @property
    def num_blocks(self) -> int:
        return self._runs.num_blocks

    @property
    def num_free(self) -> int:
        """Blocks any owner can still get: unreserved free blocks, reservations, and cached
        blocks no owner shares (evictable)."""
        return self._runs.num_free + self._num_reserved + self._cache.num_evictable

    @property
    def num_cached(self) -> int:
        """Cached blocks, shared or evictable."""
        return len(self._cache)

    @property
    def num_evictable(self) -> int:
        """Cached blocks no owner shares (counted in ``num_free``)."""
        return self._cache.num_evictable

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def growth_allowance(self) -> int:
        return self._growth_allowance

    def can_allocate(self, num_blocks: int) -> bool:
        """Whether ``allocate(owner, num_blocks)`` would succeed (for any owner)."""
        return 0 <= num_blocks <= self.num_free

    def groups(self, owner: Hashable) -> tuple[BlockRun, ...]:
        """The owner's groups in block-table order (``()`` for an unknown owner)."""
        return tuple(self._groups.get(owner, ()))

    def block_ids(self, owner: Hashable) -> list[int]:
        """The owner's block table: its shared prefix, then its groups' blocks, in token order."""
        own = [b for g in self._groups.get(owner, ()) for b in range(g.start, g.stop)]
        return self._prefix.get(owner, []) + own

    def table(self, owner: Hashable) -> tuple[BlockRun, ...]:
        """The owner's block table as runs: its shared prefix (adjacent blocks merged), then
        its groups (what a SeqStart carries)."""
        runs: list[BlockRun] = []
        for b in self._prefix.get(owner, ()):
            if runs and runs[-1].stop == b:
                runs[-1] = BlockRun(runs[-1].start, runs[-1].count + 1)
            else:
                runs.append(BlockRun(b, 1))
        return (*runs, *self._groups.get(owner, ()))

    def prefix_of(self, owner: Hashable) -> list[int]:
        """The cached blocks the owner shares at the head of its table (``[]``: none)."""
        return list(self._prefix.get(owner, ()))

    def prefix_hashes(self, owner: Hashable) -> list[bytes]:
        return [self._cache.entry(b).hash for b in self._prefix.get(owner, ())]

    def num_blocks_of(self, owner: Hashable) -> int:
        """The length of the owner's block table (shared prefix included)."""
        return self._counts.get(owner, 0) + len(self._prefix.get(owner, ()))

    def match(self, hashes: Sequence[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of ``hashes`` (nothing changes)."""
        return self._cache.match(hashes)

    def is_cached(self, block: int) -> bool:
        return block in self._cache

    def num_groups_of(self, owner: Hashable) -> int:
        """How many groups the owner has: the number of copies a swap of it costs."""
        return len(self._groups.get(owner, ()))

    def reserved_of(self, owner: Hashable) -> int:
        """Blocks reserved for the owner's growth in place (0 if none)."""
        run = self._reserved.get(owner)
        return 0 if run is None else run.count

    def owners(self) -> list[Hashable]:
        return list(self._groups)

    def __contains__(self, owner: object) -> bool:
        return owner in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            num_blocks=self.num_blocks,
            num_free=self.num_free,
            num_owners=len(self._groups),
            num_groups=self._num_groups,
            num_free_runs=self._runs.num_free_runs,
            largest_free_run=self._runs.largest_free_run(),
            num_reserved=self._num_reserved,
            num_cached=len(self._cache),
            num_evictions=self._num_evictions,
        )

    # ---------------------------------------------------------------- changing

    def allocate(
        self, owner: Hashable, num_blocks: int, *, expected_total: int | None = None
    ) -> list[BlockRun] | None:
        """Give ``owner`` ``num_blocks`` more blocks; the runs added, in block-table order.

        Attempts, in order: (1) grow the owner's last group in place (its reservation, then
        free blocks after it); (2) put the rest in one new group, preferring a free run with
        room after it for the expected growth -- ``expected_total`` minus what the owner will
        then hold, or ``growth_allowance`` when ``expected_total`` is not given -- and reserve
        that room; (3) give back other owners' reservations, then degrade to several smaller
        groups. Returns ``None`` and changes nothing if fewer than ``num_blocks`` blocks are
        free; ``num_blocks == 0`` returns ``[]`` and does not register the owner.
        ``expected_total`` applies to this call only; it is not remembered.
        """
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if expected_total is not None and expected_total < 0:
            raise ValueError(f"expected_total must be >= 0, got {expected_total}")
        if num_blocks == 0:
            return []
        if num_blocks > self.num_free:
            return None
        self._evict(num_blocks - self._runs.num_free - self._num_reserved)

        groups = self._groups.setdefault(owner, [])
        added: list[BlockRun] = []
        remaining = num_blocks - self._grow_in_place(owner, groups, num_blocks, added)
        if remaining:
            total_after = self.num_blocks_of(owner) + num_blocks
            room = (
                self._growth_allowance
                if expected_total is None
                else max(0, expected_total - total_after)
            )
            # After growing, the block at the last group's stop is used by someone else,
            # so a new run never continues the last group, nor one new run the previous one.
            new_runs = self._new_groups(owner, remaining, room)
            groups.extend(new_runs)
            added.extend(new_runs)
            self._num_groups += len(new_runs)
        self._counts[owner] = self._counts.get(owner, 0) + num_blocks
        return added

    def share(self, owner: Hashable, blocks: Sequence[int]) -> None:
        """Start ``owner`` with the cached ``blocks`` (a ``match`` result) as its table's
        prefix, shared read-only: they cannot be evicted until every sharer is freed.
        ``ValueError`` (nothing changes) for an owner that holds blocks already."""
        if owner in self._groups:
            raise ValueError(f"owner {owner!r} already holds blocks; a prefix comes first")
        if not blocks:
            return
        self._cache.acquire(blocks)
        self._prefix[owner] = list(blocks)
        self._groups[owner] = []
        self._counts[owner] = 0

    def free(self, owner: Hashable, *, cache: Sequence[bytes] = ()) -> list[BlockRun]:
        """Give back all of ``owner``'s blocks and its reservation; its groups, or ``[]``.

        ``cache``: the content hashes of the first blocks of its table (its full, computed
        blocks). Those of its own blocks stay cached under them (a hash cached already: its
        block is released); its shared prefix, whose hashes must agree, is released to the
        cache. Without ``cache`` every own block is released.
        """
        groups = self._groups.pop(owner, None)
        if groups is None:
            return []
        prefix = self._prefix.pop(owner, [])
        del self._counts[owner]
        self._num_groups -= len(groups)
        self._drop_reservation(owner)
        kept = self._keep_cached(prefix, groups, cache) if len(cache) > len(prefix) else set()
        for run in groups:
            self._release_except(run, kept)
        self._cache.release(prefix)
        return groups

    def drop_cached(self, hashes: Sequence[bytes]) -> int:
        """Forget the unshared cached blocks under ``hashes`` and their continuations (their
        KV was never written, say); how many blocks were released."""
        dropped = self._cache.drop(hashes)
        for b in dropped:
            self._runs.release(BlockRun(b, 1))
        return len(dropped)

    # --------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Raise ``AssertionError`` unless groups, reservations and free runs tile the blocks.

        Checks: free runs coalesced and consistent; every group non-empty; no block owned
        twice, or both owned and free; used + free == total; counters match; no two
        consecutive groups of an owner that should be one; each reservation sits right after
        its owner's last group.
        """
        self._runs.check_integrity()
        self._cache.check_integrity()
        assert set(self._groups) == set(self._counts), "owner maps disagree"
        assert set(self._prefix) <= set(self._groups), "a prefix of an unknown owner"
        spans: list[tuple[int, int, str]] = []
        num_groups = 0
        refs: dict[int, int] = {}
        for owner, prefix in self._prefix.items():
            assert prefix, f"owner {owner!r} has an empty prefix"
            for b in prefix:
                assert b in self._cache, f"prefix block {b} of {owner!r} is not cached"
                refs[b] = refs.get(b, 0) + 1
            hashes = self.prefix_hashes(owner)
            assert self._cache.match(hashes) == prefix, f"prefix of {owner!r} is not a chain"
        shared = 0
        for b in self._cache.blocks():
            e = self._cache.entry(b)
            assert e.refs == refs.get(b, 0), f"cached block {b}: {e.refs} refs, {refs.get(b, 0)}"
            shared += e.refs > 0
            spans.append((b, b + 1, "a cached block"))
        for owner, groups in self._groups.items():
            assert groups or owner in self._prefix, f"owner {owner!r} registered with no blocks"
            assert sum(g.count for g in groups) == self._counts[owner], (
                f"block count of {owner!r} disagrees with its groups"
            )
            for prev, nxt in pairwise(groups):
                assert prev.stop != nxt.start, f"{owner!r}: groups {prev}, {nxt} not merged"
            for g in groups:
                assert g.count >= 1, f"empty group {g} of {owner!r}"
                spans.append((g.start, g.stop, f"a group of {owner!r}"))
            num_groups += len(groups)
        assert num_groups == self._num_groups, "group counter drifted"
        for owner, res in self._reserved.items():
            assert owner in self._groups, f"reservation of unknown owner {owner!r}"
            assert res.count >= 1, f"empty reservation of {owner!r}"
            assert res.start == self._groups[owner][-1].stop, (
                f"reservation {res} of {owner!r} not right after its last group"
            )
            spans.append((res.start, res.stop, f"the reservation of {owner!r}"))
        assert sum(r.count for r in self._reserved.values()) == self._num_reserved, (
            "reserved counter drifted"
        )
        spans.extend((r.start, r.stop, "free space") for r in self._runs.free_runs())
        spans.sort()
        pos = 0
        for start, stop, what in spans:
            assert start == pos, f"blocks near {pos} owned twice or lost ({what} [{start}, {stop}))"
            pos = stop
        assert pos == self.num_blocks, f"blocks [{pos}, {self.num_blocks}) neither owned nor free"
        assert sum(self._counts.values()) + shared + self.num_free == self.num_blocks, (
            "used + shared + free != total"
        )

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"BlockGroupAllocator(num_blocks={s.num_blocks}, num_free={s.num_free}, "
            f"owners={s.num_owners}, groups={s.num_groups}, reserved={s.num_reserved}, "
            f"free_runs={s.num_free_runs})"
        )

    # ----------------------------------------------------------------- private

    def _evict(self, count: int) -> None:
        """Evict ``count`` cached blocks (no-op for ``count <= 0``); they coalesce as freed."""
        for _ in range(count):
            block = self._cache.evict()
            assert block is not None, "the free count was checked first"
            self._runs.release(BlockRun(block, 1))
        if count > 0:
            self._num_evictions += count
            if self._on_evict is not None:
                self._on_evict(count)

    def _keep_cached(
        self, prefix: list[int], groups: list[BlockRun], cache: Sequence[bytes]
    ) -> set[int]:
        """Caches the owner's own blocks under ``cache[len(prefix):]``; the blocks kept."""
        n = len(prefix)
        assert [self._cache.entry(b).hash for b in prefix] == list(cache[:n]), (
            "a shared prefix freed under other hashes"
        )
        own = [b for g in groups for b in g.blocks()]
        parent = prefix[-1] if prefix else None
        kept: set[int] = set()
        for block, h in zip(own, cache[n:], strict=False):
            if self._cache.insert(block, h, parent):
                kept.add(block)
                parent = block
            else:
                parent = self._cache.block_of(h)
        return kept

    def _release_except(self, run: BlockRun, kept: set[int]) -> None:
        """Releases the blocks of ``run`` not in ``kept``, as maximal sub-runs."""
        if not kept:
            self._runs.release(run)
            return
        start: int | None = None
        for b in run.blocks():
            if b in kept:
                if start is not None:
                    self._runs.release(BlockRun(start, b - start))
                    start = None
            elif start is None:
                start = b
        if start is not None:
            self._runs.release(BlockRun(start, run.stop - start))

    def _grow_in_place(
        self, owner: Hashable, groups: list[BlockRun], wanted: int, added: list[BlockRun]
    ) -> int:
        """Extend the last group by up to ``wanted`` blocks; how many it took."""
        if not groups:
            return 0
        last = groups[-1]
        grown = 0
        res = self._reserved.pop(owner, None)
        if res is not None:
            grown = min(wanted, res.count)
            self._num_reserved -= res.count
            if grown < res.count:
                self._reserved[owner] = BlockRun(res.start + grown, res.count - grown)
                self._num_reserved += res.count - grown
        if grown < wanted:
            grown += self._runs.extend(last.stop + grown, wanted - grown)
        if grown:
            groups[-1] = BlockRun(last.start, last.count + grown)
            added.append(BlockRun(last.stop, grown))
        return grown

    def _new_groups(self, owner: Hashable, count: int, room: int) -> list[BlockRun]:
        """Place ``count`` blocks for an owner with no reservation; reserve ``room`` if it fits."""
        if room:
            run = self._runs.allocate_contiguous(count + room)
            if run is not None:
                self._reserved[owner] = BlockRun(run.start + count, room)
                self._num_reserved += room
                return [BlockRun(run.start, count)]
        if self._runs.largest_free_run() < count:
            self._reclaim_reservations(count)
        runs = self._runs.allocate(count)
        assert runs is not None, "free count was checked first"
        return runs

    def _reclaim_reservations(self, wanted_run: int) -> None:
        """Give reservations back, oldest first, until a free run of ``wanted_run`` exists."""
        for owner in list(self._reserved):
            self._drop_reservation(owner)
            if self._runs.largest_free_run() >= wanted_run:
                return

    def _drop_reservation(self, owner: Hashable) -> None:
        res = self._reserved.pop(owner, None)
        if res is not None:
            self._num_reserved -= res.count
            self._runs.release(res)
