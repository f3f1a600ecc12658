"""The block-group allocator: device KV blocks of one worker, handed out in contiguous runs.

Owned by the scheduler, one per worker; the worker never decides allocation, it only
applies the block tables the scheduler sends. A block holds all layers' K and V (see
DESIGN.md, "KV memory layout"), so a *group* of ``g`` adjacent blocks is one contiguous
region and moves in one copy when its owner is swapped.

An owner (a request id, any hashable) holds a list of groups in **block-table order**: the
order of its token positions, not of block ids::

    device blocks  0   1   2   3   4   5   6   7   8   9  10  11
                  [A0  A1  A2][B0  B1][A3  A4][ free             ]
    groups(A) = (BlockRun(0, 3), BlockRun(5, 2))   block_ids(A) = [0, 1, 2, 5, 6]
    groups(B) = (BlockRun(3, 2),)                  block_ids(B) = [3, 4]

    allocate(B, 1): block 5 (after B's last group) is used -> new group at 7, with room
                    after it for B's expected growth
    allocate(A, 1): block 7 is now B's -> A starts a new group, unless the policy left
                    A room after 6 earlier (it did not here)

Policy of ``allocate(owner, n)``: (1) grow the owner's last group in place as far as the
next blocks are free; (2) start one new group for the rest, best fit among free runs with
room for the expected growth after it, so later one-block growth stays in place; (3) if no
free run is large enough, degrade to several smaller groups, largest first, down to single
blocks -- never worse than per-block paging. Free runs coalesce on ``free``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

from servekit.runs import BlockRun, RunAllocator

__all__ = ["AllocatorStats", "BlockGroupAllocator", "BlockRun"]


class AllocatorStats(NamedTuple):
    """A snapshot of one allocator, for metrics and logs."""

    num_blocks: int
    num_free: int
    num_owners: int
    num_groups: int
    num_free_runs: int
    largest_free_run: int


class BlockGroupAllocator:
    """Allocates a worker's device blocks to owners as contiguous block groups.

    Contract:

    * ``allocate`` counts first: it returns ``None`` and changes nothing when fewer blocks are
      free than asked; otherwise it always succeeds (degrading to smaller groups).
    * The runs it returns are the blocks *added*, in block-table order; the caller appends
      their blocks to the owner's block table in that order. A grow in place returns a run
      that continues the owner's last group, and ``groups()`` shows the two merged.
    * ``free(owner)`` returns every block of the owner at once; there is no partial free.
      Unknown owners are not an error: ``free``/``groups``/``block_ids`` return empty results
      and ``num_blocks_of`` returns 0, so a cancel racing a finish needs no special case.
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
        self._num_groups = 0

    # ----------------------------------------------------------------- queries

    @property
    def num_blocks(self) -> int:
        return self._runs.num_blocks

    @property
    def num_free(self) -> int:
        return self._runs.num_free

    @property
    def num_used(self) -> int:
        return self._runs.num_used

    @property
    def growth_allowance(self) -> int:
        return self._growth_allowance

    def can_allocate(self, num_blocks: int) -> bool:
        """Whether ``allocate(owner, num_blocks)`` would succeed (for any owner)."""
        return 0 <= num_blocks <= self._runs.num_free

    def groups(self, owner: Hashable) -> tuple[BlockRun, ...]:
        """The owner's groups in block-table order (``()`` for an unknown owner)."""
        return tuple(self._groups.get(owner, ()))

    def block_ids(self, owner: Hashable) -> list[int]:
        """The owner's block table: its block ids in token order."""
        return [b for g in self._groups.get(owner, ()) for b in range(g.start, g.stop)]

    def num_blocks_of(self, owner: Hashable) -> int:
        return self._counts.get(owner, 0)

    def num_groups_of(self, owner: Hashable) -> int:
        """How many groups (so how many copies a swap of the owner costs)."""
        return len(self._groups.get(owner, ()))

    def owners(self) -> list[Hashable]:
        return list(self._groups)

    def __contains__(self, owner: object) -> bool:
        return owner in self._groups

    def __len__(self) -> int:
        return len(self._groups)

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            num_blocks=self._runs.num_blocks,
            num_free=self._runs.num_free,
            num_owners=len(self._groups),
            num_groups=self._num_groups,
            num_free_runs=self._runs.num_free_runs,
            largest_free_run=self._runs.largest_free_run(),
        )

    # ---------------------------------------------------------------- changing

    def allocate(
        self, owner: Hashable, num_blocks: int, *, expected_total: int | None = None
    ) -> list[BlockRun] | None:
        """Give ``owner`` ``num_blocks`` more blocks; the runs added, in block-table order.

        Attempts, in order: (1) grow the owner's last group in place; (2) put the rest in one
        new group, preferring a free run with room after it for the expected growth --
        ``expected_total`` minus what the owner will then hold, or ``growth_allowance`` when
        ``expected_total`` is not given; (3) degrade to several smaller groups. Returns
        ``None`` and changes nothing if fewer than ``num_blocks`` blocks are free;
        ``num_blocks == 0`` returns ``[]`` (and does not register the owner).
        ``expected_total`` is used for this call only; it is not remembered.
        """
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if expected_total is not None and expected_total < 0:
            raise ValueError(f"expected_total must be >= 0, got {expected_total}")
        if num_blocks == 0:
            return []
        if num_blocks > self._runs.num_free:
            return None

        groups = self._groups.setdefault(owner, [])
        added: list[BlockRun] = []
        remaining = num_blocks
        if groups:
            last = groups[-1]
            grown = self._runs.extend(last.stop, remaining)
            if grown:
                groups[-1] = BlockRun(last.start, last.count + grown)
                added.append(BlockRun(last.stop, grown))
                remaining -= grown
        if remaining:
            total_after = self._counts.get(owner, 0) + num_blocks
            room = (
                self._growth_allowance
                if expected_total is None
                else max(0, expected_total - total_after)
            )
            new_runs = self._runs.allocate(remaining, prefer_room=room)
            assert new_runs is not None, "free count was checked first"
            for run in new_runs:
                # A new run never continues the previous one: each came from a different
                # maximal free run, and the last group's stop is used after extend().
                groups.append(run)
                added.append(run)
            self._num_groups += len(new_runs)
        self._counts[owner] = self._counts.get(owner, 0) + num_blocks
        return added

    def free(self, owner: Hashable) -> list[BlockRun]:
        """Return all of ``owner``'s groups to free space (coalescing); ``[]`` if unknown."""
        groups = self._groups.pop(owner, None)
        if groups is None:
            return []
        del self._counts[owner]
        self._num_groups -= len(groups)
        for run in groups:
            self._runs.release(run)
        return groups

    # --------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Raise ``AssertionError`` unless groups and free runs tile the blocks exactly once.

        Checks: free runs coalesced and consistent; every group non-empty and in range; no
        block owned twice or both owned and free; used + free == total; per-owner counts and
        the group count match; no two consecutive groups of an owner that should be one.
        """
        self._runs.check_integrity()
        assert set(self._groups) == set(self._counts), "owner maps disagree"
        spans: list[tuple[int, int, object]] = []
        num_groups = 0
        for owner, groups in self._groups.items():
            assert groups, f"owner {owner!r} registered with no groups"
            assert sum(g.count for g in groups) == self._counts[owner], (
                f"block count of {owner!r} disagrees with its groups"
            )
            for prev, nxt in zip(groups, groups[1:], strict=False):
                assert prev.stop != nxt.start, (
                    f"groups {prev} and {nxt} of {owner!r} are one run but not merged"
                )
            for g in groups:
                assert g.count >= 1, f"empty group {g} of {owner!r}"
                spans.append((g.start, g.stop, owner))
            num_groups += len(groups)
        assert num_groups == self._num_groups, "group counter drifted"
        spans.extend((r.start, r.stop, None) for r in self._runs.free_runs())
        spans.sort(key=lambda span: span[0])
        pos = 0
        for start, stop, who in spans:
            what = "free space" if who is None else f"a group of {who!r}"
            assert start == pos, (
                f"block {min(start, pos)} is owned twice or lost (at {what} [{start}, {stop}))"
            )
            pos = stop
        assert pos == self.num_blocks, f"blocks [{pos}, {self.num_blocks}) neither owned nor free"
        used = sum(self._counts.values())
        assert used + self.num_free == self.num_blocks, "used + free != total"

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"BlockGroupAllocator(num_blocks={s.num_blocks}, num_free={s.num_free}, "
            f"owners={s.num_owners}, groups={s.num_groups}, free_runs={s.num_free_runs})"
        )
