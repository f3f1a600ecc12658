"""Contiguous-run allocation over a range of fixed-size blocks.

Used by the scheduler (the device blocks of each worker, through
``scheduler_svc.block_groups``) and by the KV store (host extents of the shared arena).

Free space over ``[0, num_blocks)`` is kept as *maximal* free runs: two free runs never
touch, because a release coalesces with both neighbours::

    block   0    1    2    3    4    5    6    7    8    9
          [used used|free free free|used|free free free free]
    free runs (by start):   BlockRun(2, 3)      BlockRun(6, 4)
    by length (best fit):   (3, 2)  (4, 6)

Every operation costs O(log runs) lookups plus list insertions (a memmove over the run
lists), never a scan over blocks. The allocator does not remember *who* holds which used
run: the caller owns what it was given and must hand back exactly what it holds.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import NamedTuple


class BlockRun(NamedTuple):
    """``count`` adjacent blocks ``[start, start + count)``."""

    start: int
    # Shadows tuple.count() on purpose: the field name is part of the shared API.
    count: int  # type: ignore[assignment]

    @property
    def stop(self) -> int:
        """One past the last block of the run."""
        return self.start + self.count

    def blocks(self) -> range:
        """The block ids of the run, in order."""
        return range(self.start, self.start + self.count)


class RunAllocator:
    """Free space over ``[0, num_blocks)`` kept as maximal free runs; frees coalesce.

    Contract:

    * Every allocating call either takes exactly what it reports or returns ``None`` /
      ``False`` / ``0`` and changes nothing.
    * A run taken is always carved from the *start* of the chosen free run (or at the exact
      position asked for by ``extend`` / ``allocate_at``), so what is left after it stays free
      for the holder to grow into.
    * ``release`` accepts any run lying entirely in used space (it may be part of, or span,
      several earlier allocations); touching free space or the range's ends is a
      ``ValueError`` (this is how a double free is caught).

    ``num_blocks == 0`` is allowed: an allocator with nothing to give (every request for
    blocks returns ``None``).
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self._num_blocks = num_blocks
        self._num_free = 0
        # Four views of the same free runs, kept in step by _add_free / _remove_free.
        self._len_by_start: dict[int, int] = {}
        self._start_by_stop: dict[int, int] = {}
        self._starts: list[int] = []  # sorted
        self._by_len: list[tuple[int, int]] = []  # sorted (length, start): best fit by bisect
        if num_blocks:
            self._add_free(0, num_blocks)

    # ----------------------------------------------------------------- queries

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_used(self) -> int:
        return self._num_blocks - self._num_free

    @property
    def num_free_runs(self) -> int:
        return len(self._starts)

    def free_runs(self) -> list[BlockRun]:
        """The free runs, sorted by start (a copy)."""
        return [BlockRun(s, self._len_by_start[s]) for s in self._starts]

    def largest_free_run(self) -> int:
        """Length of the largest free run (0 when nothing is free)."""
        return self._by_len[-1][0] if self._by_len else 0

    def is_free(self, block: int) -> bool:
        """Whether ``block`` lies in a free run."""
        return self._free_run_containing(block) is not None

    # -------------------------------------------------------------- allocation

    def allocate_contiguous(self, count: int, *, prefer_room: int = 0) -> BlockRun | None:
        """Take one run of exactly ``count`` blocks, or return ``None`` and change nothing.

        Best fit among free runs of length ``>= count + prefer_room`` (so the holder can later
        grow in place by ``prefer_room`` blocks), else best fit among runs ``>= count``; ties
        go to the lowest start. The run is cut from the start of the chosen free run.
        """
        _check_positive("count", count)
        _check_non_negative("prefer_room", prefer_room)
        start = self._best_fit(count + prefer_room) if prefer_room else None
        if start is None:
            start = self._best_fit(count)
        if start is None:
            return None
        self._take(start, start, count)
        return BlockRun(start, count)

    def allocate(self, count: int, *, prefer_room: int = 0) -> list[BlockRun] | None:
        """Take ``count`` blocks in as few runs as possible, or ``None`` (nothing changes).

        One contiguous run when any free run fits (as ``allocate_contiguous``). Otherwise it
        degrades: whole free runs are taken largest first while the remainder does not fit in
        any single run, then the remainder is best-fitted (with ``prefer_room``) from the start
        of a free run. The result uses the fewest runs possible; it is never worse than single
        blocks. Runs are returned in the order taken: the last one is the one that may have
        room after it. ``count == 0`` returns ``[]``.
        """
        _check_non_negative("count", count)
        _check_non_negative("prefer_room", prefer_room)
        if count == 0:
            return []
        if count > self._num_free:
            return None
        taken: list[BlockRun] = []
        remaining = count
        while remaining > self._by_len[-1][0]:
            length, start = self._by_len[-1]
            self._take(start, start, length)
            taken.append(BlockRun(start, length))
            remaining -= length
        last = self.allocate_contiguous(remaining, prefer_room=prefer_room)
        assert last is not None, "a free run must fit the remainder"
        taken.append(last)
        return taken

    def extend(self, run_stop: int, max_count: int) -> int:
        """Grow a held run in place: take up to ``max_count`` free blocks from ``run_stop``.

        Takes ``[run_stop, run_stop + k)`` where ``k`` is the largest count ``<= max_count``
        whose blocks are all free; returns ``k`` (0 when the block at ``run_stop`` is used or
        ``run_stop == num_blocks``).
        """
        if not 0 <= run_stop <= self._num_blocks:
            raise ValueError(f"run_stop {run_stop} outside [0, {self._num_blocks}]")
        _check_non_negative("max_count", max_count)
        found = self._free_run_containing(run_stop)
        if found is None or max_count == 0:
            return 0
        free_start, free_len = found
        k = min(max_count, free_start + free_len - run_stop)
        self._take(free_start, run_stop, k)
        return k

    def allocate_at(self, start: int, count: int) -> bool:
        """Take exactly ``[start, start + count)`` if every block in it is free."""
        _check_positive("count", count)
        self._check_range(start, count)
        found = self._free_run_containing(start)
        if found is None or start + count > found[0] + found[1]:
            return False
        self._take(found[0], start, count)
        return True

    def release(self, run: BlockRun) -> None:
        """Return ``run`` to free space, coalescing with free neighbours.

        ``ValueError`` when the run is empty, out of range, or overlaps free space (a double
        free); nothing changes then.
        """
        start, count = run
        _check_positive("run.count", count)
        self._check_range(start, count)
        i = bisect_left(self._starts, start + count) - 1  # last free run starting before stop
        if i >= 0:
            prev_start = self._starts[i]
            if prev_start + self._len_by_start[prev_start] > start:
                raise ValueError(
                    f"release of {run} overlaps free run "
                    f"{BlockRun(prev_start, self._len_by_start[prev_start])} (double free?)"
                )
        self._add_free(start, count)

    # --------------------------------------------------------------- integrity

    def check_integrity(self) -> None:
        """Raise ``AssertionError`` unless the free-run views agree and runs are maximal."""
        n = len(self._starts)
        assert len(self._len_by_start) == n, "start index and length map differ in size"
        assert len(self._start_by_stop) == n, "stop index differs in size"
        assert len(self._by_len) == n, "length index differs in size"
        assert self._by_len == sorted(self._by_len), "length index not sorted"
        assert sorted((ln, s) for s, ln in self._len_by_start.items()) == self._by_len, (
            "length index disagrees with the start map"
        )
        total = 0
        prev_stop: int | None = None
        for s in self._starts:
            length = self._len_by_start.get(s)
            assert length is not None, f"start {s} missing from the length map"
            assert length >= 1, f"empty free run at {s}"
            assert s >= 0 and s + length <= self._num_blocks, f"free run {s}+{length} out of range"
            assert self._start_by_stop.get(s + length) == s, f"stop index wrong for run at {s}"
            if prev_stop is not None:
                assert prev_stop <= s, f"free runs overlap or unsorted at {s}"
                assert prev_stop != s, f"free runs touching at {s} were not coalesced"
            prev_stop = s + length
            total += length
        assert total == self._num_free, f"free count {self._num_free} != sum of runs {total}"

    def __repr__(self) -> str:
        return (
            f"RunAllocator(num_blocks={self._num_blocks}, num_free={self._num_free}, "
            f"free_runs={self.free_runs()})"
        )

    # ----------------------------------------------------------------- private

    def _check_range(self, start: int, count: int) -> None:
        if start < 0 or start + count > self._num_blocks:
            raise ValueError(f"run [{start}, {start + count}) outside [0, {self._num_blocks})")

    def _best_fit(self, length: int) -> int | None:
        """Start of the shortest free run of at least ``length`` blocks (lowest start on ties)."""
        i = bisect_left(self._by_len, (length, -1))
        return self._by_len[i][1] if i < len(self._by_len) else None

    def _free_run_containing(self, block: int) -> tuple[int, int] | None:
        i = bisect_right(self._starts, block) - 1
        if i < 0:
            return None
        start = self._starts[i]
        length = self._len_by_start[start]
        return (start, length) if block < start + length else None

    def _take(self, free_start: int, start: int, count: int) -> None:
        """Carve ``[start, start + count)`` out of the free run beginning at ``free_start``."""
        free_len = self._len_by_start[free_start]
        self._remove_free(free_start)
        # The leftovers cannot touch other free runs: the original run was maximal.
        if start > free_start:
            self._insert_free(free_start, start - free_start)
        free_stop = free_start + free_len
        if start + count < free_stop:
            self._insert_free(start + count, free_stop - start - count)

    def _add_free(self, start: int, count: int) -> None:
        """Insert a free run, merging it with the free runs just before and after it."""
        left = self._start_by_stop.get(start)
        if left is not None:
            count += start - left
            self._remove_free(left)
            start = left
        right_len = self._len_by_start.get(start + count)
        if right_len is not None:
            self._remove_free(start + count)
            count += right_len
        self._insert_free(start, count)

    def _insert_free(self, start: int, count: int) -> None:
        self._len_by_start[start] = count
        self._start_by_stop[start + count] = start
        insort(self._starts, start)
        insort(self._by_len, (count, start))
        self._num_free += count

    def _remove_free(self, start: int) -> None:
        count = self._len_by_start.pop(start)
        del self._start_by_stop[start + count]
        del self._starts[bisect_left(self._starts, start)]
        del self._by_len[bisect_left(self._by_len, (count, start))]
        self._num_free -= count


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
