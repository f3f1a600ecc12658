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
"""

from __future__ import annotations

from collections.abc import Hashable
from itertools import pairwise
from typing import NamedTuple

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

    def __init__(self, num_blocks: int, *, growth_allowance: int = 4) -> None:
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

    # ----------------------------------------------------------------- queries

    @property
    def num_blocks(self) -> int:
        return self._runs.num_blocks

    @property
    def num_free(self) -> int:
        """Blocks any owner can still get: unreserved free blocks plus reservations."""
        return self._runs.num_free + self._num_reserved

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
        """The owner's block table: its block ids in token order."""
        return [b for g in self._groups.get(owner, ()) for b in range(g.start, g.stop)]

    def num_blocks_of(self, owner: Hashable) -> int:
        return self._counts.get(owner, 0)

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

        groups = self._groups.setdefault(owner, [])
        added: list[BlockRun] = []
        remaining = num_blocks - self._grow_in_place(owner, groups, num_blocks, added)
        if remaining:
            total_after = self._counts.get(owner, 0) + num_blocks
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

    def free(self, owner: Hashable) -> list[BlockRun]:
        """Give back all of ``owner``'s groups and its reservation; its groups, or ``[]``."""
        groups = self._groups.pop(owner, None)
        if groups is None:
            return []
        del self._counts[owner]
        self._num_groups -= len(groups)
        self._drop_reservation(owner)
        for run in groups:
            self._runs.release(run)
        return groups

    # --------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Raise ``AssertionError`` unless groups, reservations and free runs tile the blocks.

        Checks: free runs coalesced and consistent; every group non-empty; no block owned
        twice, or both owned and free; used + free == total; counters match; no two
        consecutive groups of an owner that should be one; each reservation sits right after
        its owner's last group.
        """
        self._runs.check_integrity()
        assert set(self._groups) == set(self._counts), "owner maps disagree"
        spans: list[tuple[int, int, str]] = []
        num_groups = 0
        for owner, groups in self._groups.items():
            assert groups, f"owner {owner!r} registered with no groups"
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
        assert sum(self._counts.values()) + self.num_free == self.num_blocks, "used + free != total"

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"BlockGroupAllocator(num_blocks={s.num_blocks}, num_free={s.num_free}, "
            f"owners={s.num_owners}, groups={s.num_groups}, reserved={s.num_reserved}, "
            f"free_runs={s.num_free_runs})"
        )

    # ----------------------------------------------------------------- private

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
