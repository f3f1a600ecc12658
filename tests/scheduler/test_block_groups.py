"""Tests of scheduler_svc.block_groups: the per-worker block-group allocator."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from scheduler_svc.block_groups import AllocatorStats, BlockGroupAllocator, BlockRun


def snapshot(alloc: BlockGroupAllocator) -> tuple[object, ...]:
    """Everything observable, to show that a refused call changed nothing."""
    return (
        alloc.stats(),
        {o: alloc.groups(o) for o in alloc.owners()},
        {o: alloc.reserved_of(o) for o in alloc.owners()},
    )


def blocks_of(runs: list[BlockRun]) -> list[int]:
    return [b for r in runs for b in r.blocks()]


# ---------------------------------------------------------------------- unit tests


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: BlockGroupAllocator(-1), "num_blocks must be >= 0, got -1"),
        (lambda: BlockGroupAllocator(8, growth_allowance=-1), "growth_allowance must be >= 0"),
        (lambda: BlockGroupAllocator(8).allocate("r", -1), "num_blocks must be >= 0, got -1"),
        (lambda: BlockGroupAllocator(8).allocate("r", 1, expected_total=-3), "expected_total"),
    ],
)
def test_bad_arguments_raise_value_error(call: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_zero_size_allocate_registers_nothing() -> None:
    alloc = BlockGroupAllocator(8)
    assert alloc.allocate("r", 0) == []
    assert "r" not in alloc
    assert alloc.owners() == []
    assert BlockGroupAllocator(0).allocate("r", 0) == []


def test_unknown_owner_queries_are_empty() -> None:
    alloc = BlockGroupAllocator(8)
    assert alloc.free("nobody") == []
    assert alloc.groups("nobody") == ()
    assert alloc.block_ids("nobody") == []
    assert alloc.num_blocks_of("nobody") == 0
    assert alloc.num_groups_of("nobody") == 0


def test_a_request_is_one_group_when_space_allows() -> None:
    alloc = BlockGroupAllocator(64)
    assert alloc.allocate("a", 10) == [BlockRun(0, 10)]
    assert alloc.groups("a") == (BlockRun(0, 10),)
    assert alloc.block_ids("a") == list(range(10))
    assert alloc.num_blocks_of("a") == 10
    alloc.check_integrity()


def test_grow_in_place_when_next_block_is_free() -> None:
    alloc = BlockGroupAllocator(16, growth_allowance=0)
    alloc.allocate("a", 3)
    assert alloc.allocate("a", 2) == [BlockRun(3, 2)]  # continues the last group
    assert alloc.groups("a") == (BlockRun(0, 5),)  # merged: still one copy to swap
    assert alloc.block_ids("a") == [0, 1, 2, 3, 4]
    alloc.check_integrity()


def test_new_group_when_next_block_is_taken() -> None:
    alloc = BlockGroupAllocator(16, growth_allowance=0)
    alloc.allocate("a", 3)
    alloc.allocate("b", 2)  # at [3, 5): right behind a
    assert alloc.allocate("a", 2) == [BlockRun(5, 2)]
    assert alloc.groups("a") == (BlockRun(0, 3), BlockRun(5, 2))
    assert alloc.block_ids("a") == [0, 1, 2, 5, 6]
    alloc.check_integrity()


def test_grow_fills_what_is_free_then_starts_a_new_group() -> None:
    alloc = BlockGroupAllocator(16, growth_allowance=0)
    alloc.allocate("a", 3)  # [0, 3)
    alloc.allocate("b", 2)  # [3, 5)
    alloc.allocate("c", 2)  # [5, 7)
    alloc.free("b")
    added = alloc.allocate("a", 4)
    assert added == [BlockRun(3, 2), BlockRun(7, 2)]  # block-table order
    assert alloc.groups("a") == (BlockRun(0, 5), BlockRun(7, 2))
    assert alloc.block_ids("a") == [0, 1, 2, 3, 4, 7, 8]
    alloc.check_integrity()


def test_new_group_reserves_growth_allowance() -> None:
    alloc = BlockGroupAllocator(32, growth_allowance=4)
    assert alloc.allocate("a", 3) == [BlockRun(0, 3)]
    assert alloc.reserved_of("a") == 4
    assert alloc.allocate("b", 2) == [BlockRun(7, 2)]  # not right behind a
    assert alloc.num_free == 32 - 5  # reservations still count as free
    for _ in range(4):
        alloc.allocate("a", 1)
    assert alloc.groups("a") == (BlockRun(0, 7),)
    assert alloc.reserved_of("a") == 0
    alloc.check_integrity()


def test_expected_total_sets_the_room() -> None:
    alloc = BlockGroupAllocator(64, growth_allowance=1)
    alloc.allocate("a", 4, expected_total=10)
    assert alloc.reserved_of("a") == 6
    alloc.allocate("b", 4, expected_total=4)  # expects no growth: no room
    assert alloc.reserved_of("b") == 0
    assert alloc.groups("b") == (BlockRun(10, 4),)
    assert alloc.allocate("a", 6) == [BlockRun(4, 6)]
    assert alloc.groups("a") == (BlockRun(0, 10),)
    alloc.check_integrity()


def test_prefers_a_free_run_with_room() -> None:
    alloc = BlockGroupAllocator(32, growth_allowance=0)
    # Free runs of 3 ([0,3)) and of 10 ([4,14)) after this; the rest is used.
    for owner, n in (("x", 3), ("y", 1), ("z", 10), ("w", 18)):
        alloc.allocate(owner, n)
    alloc.free("x")
    alloc.free("z")
    roomy = BlockGroupAllocator(32, growth_allowance=4)
    for owner, n in (("x", 3), ("y", 1), ("z", 10), ("w", 18)):
        roomy.allocate(owner, n, expected_total=n)
    roomy.free("x")
    roomy.free("z")
    assert alloc.allocate("a", 3) == [BlockRun(0, 3)]  # no room wanted: best fit
    assert roomy.allocate("a", 3) == [BlockRun(4, 3)]  # room for 4 more: the 10-run
    assert roomy.reserved_of("a") == 4
    roomy.check_integrity()


def test_reservations_are_given_back_under_pressure() -> None:
    alloc = BlockGroupAllocator(10, growth_allowance=4)
    alloc.allocate("a", 3)  # [0, 3) + reserved [3, 7)
    assert alloc.stats().largest_free_run == 3
    assert alloc.can_allocate(7)
    assert alloc.allocate("b", 5) == [BlockRun(3, 5)]  # took a's reservation back
    assert alloc.reserved_of("a") == 0
    assert alloc.allocate("c", 2) == [BlockRun(8, 2)]
    assert alloc.num_free == 0
    assert alloc.allocate("a", 1) is None
    alloc.check_integrity()


def test_degrades_to_single_blocks_under_fragmentation() -> None:
    alloc = BlockGroupAllocator(32, growth_allowance=0)
    for i in range(32):
        alloc.allocate(i, 1)
    for i in range(0, 32, 2):
        alloc.free(i)
    assert alloc.stats().num_free_runs == 16
    assert alloc.stats().largest_free_run == 1
    added = alloc.allocate("big", 16)
    assert added is not None
    assert len(added) == 16
    assert all(r.count == 1 for r in added)
    assert sorted(blocks_of(added)) == list(range(0, 32, 2))
    assert alloc.block_ids("big") == blocks_of(added)  # table order = returned order
    assert alloc.num_groups_of("big") == 16
    assert alloc.num_free == 0
    alloc.check_integrity()


def test_degrades_to_few_groups_when_runs_are_mid_sized() -> None:
    alloc = BlockGroupAllocator(20, growth_allowance=0)
    for owner, n in (("p", 5), ("q", 1), ("r", 4), ("s", 1), ("t", 3), ("u", 6)):
        alloc.allocate(owner, n)
    for owner in ("p", "r", "t"):
        alloc.free(owner)  # free runs of 5, 4, 3
    added = alloc.allocate("x", 9)
    assert added == [BlockRun(0, 5), BlockRun(6, 4)]
    alloc.check_integrity()


def test_short_allocate_returns_none_and_changes_nothing() -> None:
    alloc = BlockGroupAllocator(16, growth_allowance=2)
    alloc.allocate("a", 5)
    alloc.allocate("b", 6)
    before = snapshot(alloc)
    assert alloc.num_free == 5
    assert not alloc.can_allocate(6)
    assert alloc.allocate("a", 6) is None
    assert alloc.allocate("new", 6) is None
    assert "new" not in alloc
    assert snapshot(alloc) == before
    alloc.check_integrity()


def test_free_returns_groups_and_coalesces_to_one_run() -> None:
    alloc = BlockGroupAllocator(24, growth_allowance=1)
    for owner in "abc":
        alloc.allocate(owner, 3)
    for owner in "abc":
        alloc.allocate(owner, 2)
    groups_b = alloc.groups("b")
    assert alloc.free("b") == list(groups_b)
    assert "b" not in alloc
    for owner in "ac":
        alloc.free(owner)
    assert alloc.stats() == AllocatorStats(
        num_blocks=24,
        num_free=24,
        num_owners=0,
        num_groups=0,
        num_free_runs=1,
        largest_free_run=24,
        num_reserved=0,
    )
    alloc.check_integrity()


def test_interleaved_growth_keeps_few_groups() -> None:
    """8 requests, 3-block prompts, then 15 one-block steps each, round robin.

    With growth_allowance=4 each new group carries 4 blocks of room: the prompt group
    absorbs steps 1-4, then a new group per 5 steps (5-9, 10-14, 15): 4 groups each.
    Without an allowance every step lands behind the next request: 1 + 15 = 16 groups.
    With expected_total known up front, the whole request is one group.
    """

    def run(growth_allowance: int, expected_total: int | None) -> list[int]:
        alloc = BlockGroupAllocator(256, growth_allowance=growth_allowance)
        for r in range(8):
            alloc.allocate(r, 3, expected_total=expected_total)
        for _ in range(15):
            for r in range(8):
                assert alloc.allocate(r, 1) is not None
                alloc.check_integrity()
        assert all(alloc.num_blocks_of(r) == 18 for r in range(8))
        return [alloc.num_groups_of(r) for r in range(8)]

    assert run(growth_allowance=4, expected_total=None) == [4] * 8
    assert run(growth_allowance=0, expected_total=None) == [16] * 8
    assert run(growth_allowance=0, expected_total=18) == [1] * 8


def test_check_integrity_catches_a_block_owned_twice() -> None:
    alloc = BlockGroupAllocator(8, growth_allowance=0)
    alloc.allocate("a", 2)
    alloc.allocate("b", 2)
    alloc._groups["b"][0] = BlockRun(1, 2)  # overlap a's block 1
    with pytest.raises(AssertionError, match="owned twice"):
        alloc.check_integrity()


# ------------------------------------------------------------------ property tests

OWNERS = st.sampled_from(["r0", "r1", "r2", "r3", "r4", 5, ("conv", 6)])


class BlockGroupMachine(RuleBasedStateMachine):
    """Random allocate / grow / free with several owners against a block-table model."""

    @initialize(num_blocks=st.integers(0, 96), allowance=st.integers(0, 6))
    def setup(self, num_blocks: int, allowance: int) -> None:
        self.alloc = BlockGroupAllocator(num_blocks, growth_allowance=allowance)
        self.tables: dict[Hashable, list[int]] = {}

    @rule(
        owner=OWNERS,
        n=st.integers(0, 24),
        expected_extra=st.none() | st.integers(0, 16),
    )
    def allocate(self, owner: Hashable, n: int, expected_extra: int | None) -> None:
        held = len(self.tables.get(owner, []))
        expected_total = None if expected_extra is None else held + n + expected_extra
        before = snapshot(self.alloc)
        fresh_fits = owner not in self.tables and self.alloc.stats().largest_free_run >= n
        added = self.alloc.allocate(owner, n, expected_total=expected_total)
        if added is None:
            assert n > self.alloc.num_free
            assert snapshot(self.alloc) == before
            return
        assert sum(r.count for r in added) == n
        assert all(r.count >= 1 for r in added)
        if fresh_fits and n:
            assert len(added) == 1, "a new request fits in one free run but got several"
        if n:
            self.tables.setdefault(owner, []).extend(blocks_of(added))

    @rule(owner=OWNERS)
    def grow_one(self, owner: Hashable) -> None:
        if owner not in self.tables:
            return
        last = self.alloc.groups(owner)[-1]
        next_free = self.alloc.reserved_of(owner) > 0 or self._unreserved_free(last.stop)
        added = self.alloc.allocate(owner, 1)
        if added is None:
            assert self.alloc.num_free == 0
            return
        if next_free:
            assert added == [BlockRun(last.stop, 1)], "did not grow in place"
            assert self.alloc.groups(owner)[-1] == BlockRun(last.start, last.count + 1)
        self.tables[owner].extend(blocks_of(added))

    def _unreserved_free(self, block: int) -> bool:
        return any(r.start <= block < r.stop for r in self.alloc._runs.free_runs())

    @rule(owner=OWNERS)
    def free(self, owner: Hashable) -> None:
        freed = self.alloc.free(owner)
        assert blocks_of(freed) == self.tables.pop(owner, [])
        assert owner not in self.alloc

    @precondition(lambda self: self.tables)
    @rule()
    def free_everything(self) -> None:
        for owner in list(self.tables):
            self.alloc.free(owner)
        self.tables.clear()
        s = self.alloc.stats()
        n = self.alloc.num_blocks
        assert (s.num_free, s.num_free_runs, s.largest_free_run) == (n, int(n > 0), n)

    @invariant()
    def matches_model(self) -> None:
        self.alloc.check_integrity()
        owned = [b for t in self.tables.values() for b in t]
        assert len(owned) == len(set(owned)), "a block owned twice"
        assert len(owned) + self.alloc.num_free == self.alloc.num_blocks
        assert self.alloc.num_used == len(owned)
        assert set(self.alloc.owners()) == set(self.tables)
        for owner, table in self.tables.items():
            assert self.alloc.block_ids(owner) == table
            assert self.alloc.num_blocks_of(owner) == len(table)
        assert self.alloc.stats().num_groups == sum(
            self.alloc.num_groups_of(o) for o in self.tables
        )


BlockGroupMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBlockGroupMachine = BlockGroupMachine.TestCase


# ------------------------------------------------------- cached blocks (device tier)

H = [bytes([i]) * 16 for i in range(8)]


def test_freed_blocks_stay_cached_and_count_as_free():
    alloc = BlockGroupAllocator(8, growth_allowance=0)
    alloc.allocate("a", 3)
    alloc.free("a", cache=H[:2])  # two full blocks keep their hashes, the third is released
    alloc.check_integrity()
    assert alloc.num_cached == 2 and alloc.num_evictable == 2 and alloc.num_free == 8
    assert alloc.match(H[:3]) == [0, 1] and alloc.stats().num_free_runs == 1


def test_a_shared_prefix_heads_the_table_and_is_not_a_group():
    alloc = BlockGroupAllocator(8, growth_allowance=0)
    alloc.allocate("a", 2)
    alloc.free("a", cache=H[:2])
    alloc.share("b", alloc.match(H[:2]))
    assert alloc.allocate("b", 2) == [BlockRun(2, 2)]
    alloc.check_integrity()
    assert alloc.block_ids("b") == [0, 1, 2, 3] and alloc.table("b") == (
        BlockRun(0, 2),
        BlockRun(2, 2),
    )
    assert alloc.groups("b") == (BlockRun(2, 2),) and alloc.num_groups_of("b") == 1
    assert alloc.num_blocks_of("b") == 4 and alloc.num_free == 4 and alloc.num_evictable == 0
    with pytest.raises(ValueError, match="already holds"):
        alloc.share("b", [0])
    alloc.free("b", cache=H[:3])  # the prefix is released to the cache, block 2 joins it
    alloc.check_integrity()
    assert alloc.match(H[:4]) == [0, 1, 2] and alloc.num_free == 8


def test_eviction_takes_truly_free_space_first_then_lru_leaves_and_coalesces():
    alloc = BlockGroupAllocator(6, growth_allowance=0)
    alloc.allocate("a", 2)
    alloc.allocate("b", 2)
    alloc.free("a", cache=H[:2])  # older chain at 0, 1
    alloc.free("b", cache=[H[4], H[5]])  # newer chain at 2, 3
    assert alloc.allocate("c", 2) == [BlockRun(4, 2)]  # truly free first: nothing evicted
    assert alloc.stats().num_evictions == 0
    assert alloc.allocate("d", 1) == [BlockRun(1, 1)]  # the oldest chain's leaf
    assert alloc.match(H[:2]) == [0] and alloc.match([H[4], H[5]]) == [2, 3]
    alloc.free("c")
    alloc.free("d")
    alloc.check_integrity()
    assert alloc.stats().num_evictions == 1 and alloc.stats().num_free_runs == 2  # 1 and 4-5


def test_a_duplicate_hash_releases_its_block_and_drop_forgets_a_subtree():
    alloc = BlockGroupAllocator(8, growth_allowance=0)
    alloc.allocate("a", 2)
    alloc.allocate("b", 3)
    alloc.free("a", cache=H[:2])
    alloc.free("b", cache=H[:3])  # blocks 2, 3 duplicate 0, 1; block 4 continues block 1
    alloc.check_integrity()
    assert alloc.match(H[:3]) == [0, 1, 4] and alloc.num_cached == 3
    assert alloc.drop_cached([H[1]]) == 2  # block 1 and its continuation
    alloc.check_integrity()
    assert alloc.match(H[:3]) == [0] and alloc.num_free == 8
