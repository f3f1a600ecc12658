"""Tests of servekit.runs: the contiguous-run allocator shared by the scheduler and the store."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from servekit.runs import BlockRun, RunAllocator


def make_fragmented(num_blocks: int, used: list[tuple[int, int]]) -> RunAllocator:
    """An allocator with exactly the given ``(start, count)`` runs in use."""
    alloc = RunAllocator(num_blocks)
    for start, count in used:
        assert alloc.allocate_at(start, count)
    alloc.check_integrity()
    return alloc


def maximal_runs(free: set[int]) -> list[BlockRun]:
    """Reference: the maximal runs of a set of free block ids, by start."""
    runs: list[BlockRun] = []
    for b in sorted(free):
        if runs and runs[-1].stop == b:
            runs[-1] = BlockRun(runs[-1].start, runs[-1].count + 1)
        else:
            runs.append(BlockRun(b, 1))
    return runs


# ---------------------------------------------------------------------- unit tests


def test_block_run_stop_and_blocks() -> None:
    run = BlockRun(3, 4)
    assert run.stop == 7
    assert list(run.blocks()) == [3, 4, 5, 6]
    start, count = run
    assert (start, count) == (3, 4)


def test_new_allocator_is_one_free_run() -> None:
    alloc = RunAllocator(10)
    assert alloc.free_runs() == [BlockRun(0, 10)]
    assert (alloc.num_blocks, alloc.num_free, alloc.num_used) == (10, 10, 0)
    assert alloc.largest_free_run() == 10
    alloc.check_integrity()


def test_empty_allocator_gives_nothing() -> None:
    alloc = RunAllocator(0)
    assert alloc.free_runs() == []
    assert alloc.largest_free_run() == 0
    assert alloc.allocate(1) is None
    assert alloc.allocate(0) == []
    assert alloc.allocate_contiguous(1) is None
    assert alloc.extend(0, 3) == 0
    alloc.check_integrity()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: RunAllocator(-1), "num_blocks must be >= 0, got -1"),
        (lambda: RunAllocator(8).allocate_contiguous(0), "count must be >= 1, got 0"),
        (lambda: RunAllocator(8).allocate_contiguous(2, prefer_room=-1), "prefer_room"),
        (lambda: RunAllocator(8).allocate(-2), "count must be >= 0, got -2"),
        (lambda: RunAllocator(8).extend(9, 1), "run_stop 9 outside"),
        (lambda: RunAllocator(8).extend(2, -1), "max_count must be >= 0"),
        (lambda: RunAllocator(8).allocate_at(6, 3), r"run \[6, 9\) outside \[0, 8\)"),
        (lambda: RunAllocator(8).allocate_at(-1, 1), "outside"),
        (lambda: RunAllocator(8).release(BlockRun(0, 0)), "run.count must be >= 1"),
    ],
)
def test_bad_arguments_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_contiguous_is_taken_from_start_of_best_fit() -> None:
    # free runs: [2,5) len 3, [6,10) len 4, [12,20) len 8
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])
    assert alloc.allocate_contiguous(3) == BlockRun(2, 3)  # exact fit
    assert alloc.allocate_contiguous(2) == BlockRun(6, 2)  # best fit: the 4-run, from its start
    assert alloc.free_runs() == [BlockRun(8, 2), BlockRun(12, 8)]
    alloc.check_integrity()


def test_contiguous_prefers_room_then_falls_back() -> None:
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])  # free lens 3, 4, 8
    assert alloc.allocate_contiguous(2, prefer_room=3) == BlockRun(12, 2)  # 8 >= 2 + 3
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])
    assert alloc.allocate_contiguous(3, prefer_room=1) == BlockRun(6, 3)  # 4 >= 3 + 1
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])
    assert alloc.allocate_contiguous(8, prefer_room=5) == BlockRun(12, 8)  # no room anywhere


def test_contiguous_returns_none_without_change() -> None:
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])
    before = alloc.free_runs()
    assert alloc.allocate_contiguous(9) is None
    assert alloc.free_runs() == before


def test_allocate_prefers_one_run() -> None:
    alloc = make_fragmented(20, [(0, 2), (5, 1), (10, 2)])
    assert alloc.allocate(4) == [BlockRun(6, 4)]


def test_allocate_degrades_with_fewest_runs() -> None:
    # free lens 3 ([2,5)), 4 ([6,10)), 2 ([12,14)), 1 ([15,16))
    alloc = make_fragmented(16, [(0, 2), (5, 1), (10, 2), (14, 1)])
    runs = alloc.allocate(6)
    assert runs is not None
    assert sum(r.count for r in runs) == 6
    assert runs[0] == BlockRun(6, 4)  # largest first
    assert runs[1] == BlockRun(12, 2)  # remainder best-fitted: keeps the 3-run whole
    assert alloc.free_runs() == [BlockRun(2, 3), BlockRun(15, 1)]
    alloc.check_integrity()


def test_allocate_degrades_to_single_blocks() -> None:
    alloc = make_fragmented(16, [(b, 1) for b in range(0, 16, 2)])  # every odd block free
    runs = alloc.allocate(8)
    assert runs is not None
    assert len(runs) == 8
    assert all(r.count == 1 for r in runs)
    assert sorted(r.start for r in runs) == list(range(1, 16, 2))
    assert alloc.num_free == 0
    alloc.check_integrity()


def test_allocate_short_returns_none_without_change() -> None:
    alloc = make_fragmented(16, [(b, 1) for b in range(0, 16, 2)])
    before = alloc.free_runs()
    assert alloc.allocate(9) is None
    assert alloc.free_runs() == before
    assert alloc.allocate(0) == []
    assert alloc.free_runs() == before


def test_extend_grows_in_place_only_from_a_free_block() -> None:
    alloc = RunAllocator(10)
    run = alloc.allocate_contiguous(3)
    assert run == BlockRun(0, 3)
    assert alloc.extend(run.stop, 2) == 2
    assert alloc.free_runs() == [BlockRun(5, 5)]
    assert alloc.allocate_at(8, 1)
    assert alloc.extend(5, 10) == 3  # up to the used block 8
    assert alloc.extend(8, 1) == 0  # block 8 is used
    assert alloc.extend(10, 1) == 0  # at the end
    assert alloc.free_runs() == [BlockRun(9, 1)]
    alloc.check_integrity()


def test_allocate_at_all_or_nothing() -> None:
    alloc = RunAllocator(10)
    assert alloc.allocate_at(4, 2)
    assert not alloc.allocate_at(3, 2)  # block 4 used
    assert not alloc.allocate_at(5, 1)
    assert alloc.free_runs() == [BlockRun(0, 4), BlockRun(6, 4)]
    assert alloc.allocate_at(0, 4)
    assert alloc.free_runs() == [BlockRun(6, 4)]


def test_release_coalesces_with_both_neighbours() -> None:
    alloc = RunAllocator(10)
    a, b, c = (alloc.allocate_contiguous(n) for n in (3, 4, 3))
    assert a is not None and b is not None and c is not None
    alloc.release(a)
    alloc.release(c)
    assert alloc.free_runs() == [BlockRun(0, 3), BlockRun(7, 3)]
    alloc.release(b)
    assert alloc.free_runs() == [BlockRun(0, 10)]
    alloc.check_integrity()


def test_release_of_part_of_an_allocation_is_allowed() -> None:
    alloc = RunAllocator(10)
    assert alloc.allocate_contiguous(6) == BlockRun(0, 6)
    alloc.release(BlockRun(2, 2))
    assert alloc.free_runs() == [BlockRun(2, 2), BlockRun(6, 4)]
    alloc.check_integrity()


@pytest.mark.parametrize("bad", [BlockRun(0, 3), BlockRun(2, 1), BlockRun(4, 2), BlockRun(5, 3)])
def test_release_overlapping_free_space_is_rejected(bad: BlockRun) -> None:
    alloc = make_fragmented(10, [(0, 2), (6, 2)])  # free [2,6) and [8,10)
    before = alloc.free_runs()
    with pytest.raises(ValueError, match="overlaps free run"):
        alloc.release(bad)
    assert alloc.free_runs() == before


def test_double_free_is_rejected() -> None:
    alloc = RunAllocator(8)
    run = alloc.allocate_contiguous(3)
    assert run is not None
    alloc.release(run)
    with pytest.raises(ValueError, match="double free"):
        alloc.release(run)
    with pytest.raises(ValueError, match="outside"):
        alloc.release(BlockRun(6, 3))


def test_check_integrity_catches_uncoalesced_runs() -> None:
    alloc = RunAllocator(10)
    assert alloc.allocate_at(0, 10)
    # Bypass release() to plant two touching free runs.
    alloc._insert_free(2, 2)
    alloc._insert_free(4, 2)
    with pytest.raises(AssertionError, match="not coalesced"):
        alloc.check_integrity()


# ------------------------------------------------------------------ property tests


class RunAllocatorMachine(RuleBasedStateMachine):
    """Random allocate / extend / allocate_at / release against a set-of-free-blocks model."""

    @initialize(num_blocks=st.integers(0, 64))
    def setup(self, num_blocks: int) -> None:
        self.alloc = RunAllocator(num_blocks)
        self.free: set[int] = set(range(num_blocks))
        self.held: list[BlockRun] = []

    def _take(self, runs: list[BlockRun]) -> None:
        for run in runs:
            blocks = set(run.blocks())
            assert run.count >= 1
            assert blocks <= self.free, f"{run} handed out blocks that were not free"
            self.free -= blocks
            self.held.append(run)

    @rule(count=st.integers(1, 20), room=st.integers(0, 6))
    def allocate_contiguous(self, count: int, room: int) -> None:
        lengths = [r.count for r in maximal_runs(self.free)]
        run = self.alloc.allocate_contiguous(count, prefer_room=room)
        if run is None:
            assert all(n < count for n in lengths)
            return
        assert run.count == count
        roomy = [n for n in lengths if n >= count + room]
        expected_len = min(roomy) if roomy else min(n for n in lengths if n >= count)
        chosen = next(r for r in maximal_runs(self.free) if r.start == run.start)
        assert chosen.count == expected_len, "not the best fit"
        self._take([run])

    @rule(count=st.integers(0, 30), room=st.integers(0, 4))
    def allocate(self, count: int, room: int) -> None:
        before = self.alloc.free_runs()
        lengths = sorted((r.count for r in before), reverse=True)
        runs = self.alloc.allocate(count, prefer_room=room)
        if runs is None:
            assert count > len(self.free)
            assert self.alloc.free_runs() == before
            return
        assert sum(r.count for r in runs) == count
        if count:
            fewest = next(k for k in range(1, len(lengths) + 1) if sum(lengths[:k]) >= count)
            assert len(runs) == fewest
        self._take(runs)

    @rule(data=st.data(), max_count=st.integers(0, 8))
    def extend(self, data: st.DataObject, max_count: int) -> None:
        if not self.held:
            return
        i = data.draw(st.integers(0, len(self.held) - 1))
        run = self.held[i]
        expected = 0
        while expected < max_count and run.stop + expected in self.free:
            expected += 1
        assert self.alloc.extend(run.stop, max_count) == expected
        if expected:
            self.free -= set(range(run.stop, run.stop + expected))
            self.held[i] = BlockRun(run.start, run.count + expected)

    @rule(data=st.data())
    def allocate_at(self, data: st.DataObject) -> None:
        n = self.alloc.num_blocks
        if n == 0:
            return
        start = data.draw(st.integers(0, n - 1))
        count = data.draw(st.integers(1, n - start))
        all_free = set(range(start, start + count)) <= self.free
        assert self.alloc.allocate_at(start, count) == all_free
        if all_free:
            self._take([BlockRun(start, count)])

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.held:
            return
        run = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.alloc.release(run)
        self.free |= set(run.blocks())

    @rule(data=st.data())
    def release_overlapping_free_is_rejected(self, data: st.DataObject) -> None:
        if not self.free:
            return
        block = data.draw(st.sampled_from(sorted(self.free)))
        before = self.alloc.free_runs()
        with pytest.raises(ValueError):
            self.alloc.release(BlockRun(block, 1))
        assert self.alloc.free_runs() == before

    @rule()
    def release_everything(self) -> None:
        for run in self.held:
            self.alloc.release(run)
        self.held.clear()
        self.free = set(range(self.alloc.num_blocks))
        n = self.alloc.num_blocks
        assert self.alloc.free_runs() == ([BlockRun(0, n)] if n else [])

    @invariant()
    def matches_model(self) -> None:
        self.alloc.check_integrity()
        assert self.alloc.free_runs() == maximal_runs(self.free)
        assert self.alloc.num_free == len(self.free)
        assert self.alloc.num_used + self.alloc.num_free == self.alloc.num_blocks
        assert self.alloc.largest_free_run() == max(
            (r.count for r in maximal_runs(self.free)), default=0
        )


RunAllocatorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRunAllocatorMachine = RunAllocatorMachine.TestCase
