"""Store core, no server: every flow, then check_integrity (the fixture checks each store again)."""

from __future__ import annotations

import pytest
from kvstore_factories import (
    BLOCK_BYTES,
    FakeClock,
    StoreFactory,
    blocks_of,
    commit_chain,
    h,
    worker_info,
)

from kvstore_svc.errors import Exhausted, InvalidArgument, NotFound, Precondition
from kvstore_svc.store import Store
from servekit.runs import BlockRun


def test_reserve_commit_lookup(new_store: StoreFactory) -> None:
    store = new_store(16)
    res = store.reserve(4, owner="w0")
    assert res.extents == [BlockRun(0, 4)]
    assert res.expires_in_s == 30.0
    blocks = blocks_of(res.extents)
    hashes = [h("conv", i) for i in range(4)]
    assert store.lookup(hashes) == []  # reserved blocks are invisible until committed
    assert store.stats().reserved_blocks == 4
    store.check_integrity()

    assert store.commit(res.lease_id, blocks[:2], hashes[:2], tenant="t").committed == 2
    assert store.lookup(hashes) == blocks[:2]  # the longest committed prefix
    store.check_integrity()
    assert store.commit(res.lease_id, blocks[2:], hashes[2:]).committed == 2
    assert store.lookup([*hashes, h("conv", 4)]) == blocks
    assert store.lookup([h("other", 0), *hashes]) == []  # a prefix, not any match

    s = store.stats()
    assert (s.free_blocks, s.reserved_blocks, s.committed_blocks) == (12, 0, 4)
    assert s.active_leases == 0  # the reservation ended with its last commit
    assert (s.lookups, s.lookup_hit_blocks) == (4, 6)
    with pytest.raises(NotFound):
        store.release(res.lease_id)


def test_release_returns_uncommitted_blocks(new_store: StoreFactory) -> None:
    store = new_store(8)
    res = store.reserve(5)
    blocks = blocks_of(res.extents)
    store.commit(res.lease_id, [blocks[0], blocks[3]])  # private, out of order is fine
    assert store.release(res.lease_id) == 3
    s = store.stats()
    assert (s.free_blocks, s.reserved_blocks, s.committed_blocks, s.active_leases) == (6, 0, 2, 0)
    store.check_integrity()
    with pytest.raises(NotFound):
        store.release(res.lease_id)
    with pytest.raises(NotFound):
        store.commit(res.lease_id, [blocks[1]])


def test_extents_are_as_few_as_possible(new_store: StoreFactory) -> None:
    store = new_store(10)
    a, b = store.reserve(3), store.reserve(3)
    store.reserve(3)
    store.release(a.lease_id)
    store.release(b.lease_id)
    assert store.reserve(6).extents == [BlockRun(0, 6)]  # the two releases coalesced
    store.check_integrity()
    frag = new_store(10)
    leases = [frag.reserve(1).lease_id for _ in range(10)]
    for lease_id in leases[::3]:  # frees 0, 3, 6, 9
        frag.release(lease_id)
    frag.release(leases[4])  # frees 4: runs (0,1) (3,2) (6,1) (9,1)
    res = frag.reserve(4)
    assert len(res.extents) == 3  # the fewest possible: 2 + 1 + 1
    assert BlockRun(3, 2) in res.extents
    assert sum(r.count for r in res.extents) == 4


def test_commit_validates_before_changing_anything(new_store: StoreFactory) -> None:
    store = new_store(8)
    res = store.reserve(2)
    other = store.reserve(2)
    mine, theirs = blocks_of(res.extents), blocks_of(other.extents)
    with pytest.raises(Precondition, match="not an uncommitted block"):
        store.commit(res.lease_id, [mine[0], theirs[0]], [h(1), h(2)])
    with pytest.raises(InvalidArgument, match="hashes"):
        store.commit(res.lease_id, mine, [h(1)])
    with pytest.raises(InvalidArgument, match="duplicate"):
        store.commit(res.lease_id, [mine[0], mine[0]])
    with pytest.raises(InvalidArgument, match="outside"):
        store.commit(res.lease_id, [99])
    with pytest.raises(InvalidArgument, match="hash of"):
        store.commit(res.lease_id, [mine[0]], [b"x" * 129])
    assert store.lookup([h(1)]) == []
    assert store.stats().reserved_blocks == 4
    store.commit(res.lease_id, mine, [h(1), h(2)])
    pin = store.pin(mine)
    with pytest.raises(Precondition, match="not a reservation"):
        store.commit(pin.lease_id, mine)


def test_duplicate_hash_keeps_one_copy(new_store: StoreFactory) -> None:
    store = new_store(8)
    first = commit_chain(store, "p", 2)
    res = store.reserve(3)
    dup = blocks_of(res.extents)
    result = store.commit(res.lease_id, dup, [h("p", 0), h("p", 1), h("q", 0)])
    assert (result.committed, result.deduplicated) == (1, 2)
    assert store.lookup([h("p", 0), h("p", 1)]) == first
    assert store.lookup([h("q", 0)]) == [dup[2]]
    assert store.stats().committed_blocks == 3
    assert store.stats().free_blocks == 5
    store.check_integrity()
    twice = store.reserve(2)  # the same hash twice in one commit
    result = store.commit(twice.lease_id, blocks_of(twice.extents), [h("r"), h("r")])
    assert (result.committed, result.deduplicated) == (1, 1)


def test_private_blocks_are_not_content_addressed(new_store: StoreFactory) -> None:
    store = new_store(4)
    res = store.reserve(2)
    store.commit(res.lease_id, blocks_of(res.extents), [b"", b""])
    assert store.lookup([b""]) == []
    assert store.stats().committed_blocks == 2
    assert store.stats().evictable_blocks == 0


def test_pin_and_release(new_store: StoreFactory) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 3)
    a = store.pin(blocks[:2], owner="reader-a")
    b = store.pin(blocks[1:], lease_s=5)
    assert b.expires_in_s == 5
    s = store.stats()
    assert (s.pinned_blocks, s.active_leases, s.evictable_blocks) == (3, 2, 0)
    store.check_integrity()
    assert store.release(a.lease_id) == 2
    assert store.stats().pinned_blocks == 2  # block 1 still pinned by b
    assert store.release(b.lease_id) == 2
    assert store.stats().pinned_blocks == 0
    assert store.stats().evictable_blocks == 3


def test_pin_refuses_blocks_that_are_not_committed(new_store: StoreFactory) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 2)
    reserved = blocks_of(store.reserve(1).extents)
    with pytest.raises(NotFound, match=f"block {reserved[0]}"):
        store.pin([blocks[0], reserved[0]])
    with pytest.raises(NotFound):
        store.pin([7])  # free
    with pytest.raises(InvalidArgument):
        store.pin([])
    with pytest.raises(InvalidArgument):
        store.pin([blocks[0], blocks[0]])
    assert store.stats().pinned_blocks == 0  # all or nothing


def test_free_unpinned_and_pinned(new_store: StoreFactory) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 3)
    pin = store.pin([blocks[1]])
    assert store.free(blocks) == 3
    s = store.stats()
    assert (s.free_blocks, s.committed_blocks, s.pinned_blocks) == (7, 1, 1)
    assert store.lookup([h("c", 0)]) == []
    assert store.lookup([h("c", 1)]) == []  # a freed pinned block leaves the index at once
    with pytest.raises(NotFound):
        store.pin([blocks[1]])  # no new readers of a freed block
    store.check_integrity()
    assert store.free(blocks) == 0  # already dropped: skipped
    store.release(pin.lease_id)  # the last pin goes: the block goes back to free space
    s = store.stats()
    assert (s.free_blocks, s.committed_blocks, s.pinned_blocks) == (8, 0, 0)


def test_recommit_of_a_freed_pinned_hash(new_store: StoreFactory) -> None:
    store = new_store(8)
    [old] = commit_chain(store, "x", 1)
    pin = store.pin([old])
    store.free([old])
    [new] = commit_chain(store, "x", 1)  # not a duplicate: the old copy is on its way out
    assert new != old
    assert store.lookup([h("x", 0)]) == [new]
    store.check_integrity()
    store.release(pin.lease_id)
    assert store.lookup([h("x", 0)]) == [new]


def test_reservation_expires(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(8, lease_s=10)
    res = store.reserve(4)
    store.commit(res.lease_id, blocks_of(res.extents)[:1])
    clock.advance(9.9)
    assert store.expire() == 0
    clock.advance(0.1)
    assert store.expire() == 1
    s = store.stats()
    assert (s.free_blocks, s.reserved_blocks, s.committed_blocks) == (7, 0, 1)
    assert (s.active_leases, s.expired_leases) == (0, 1)
    with pytest.raises(NotFound):
        store.commit(res.lease_id, blocks_of(res.extents)[1:2])


def test_pin_expires(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 2)
    store.pin(blocks, lease_s=1)
    long = store.pin(blocks[:1], lease_s=100)
    assert store.expire(clock.now + 1) == 1
    assert store.stats().pinned_blocks == 1
    assert store.stats().expired_leases == 1
    assert store.expire(clock.now + 100) == 1
    assert store.stats().pinned_blocks == 0
    with pytest.raises(NotFound):
        store.release(long.lease_id)


def test_overdue_lease_ends_when_touched_before_the_timer(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    store = new_store(4)
    res = store.reserve(2, lease_s=1)
    clock.advance(1)
    with pytest.raises(NotFound, match="expired"):
        store.commit(res.lease_id, blocks_of(res.extents))
    assert store.stats().free_blocks == 4
    assert store.stats().expired_leases == 1
    assert store.expire() == 0  # already ended


def test_freed_pinned_block_returns_when_pin_expires(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    store = new_store(4)
    blocks = commit_chain(store, "c", 2)
    store.pin(blocks, lease_s=2)
    store.free(blocks)
    assert store.stats().free_blocks == 2
    clock.advance(2)
    store.expire()
    assert store.stats().free_blocks == 4


def test_eviction_is_lru_and_counted(new_store: StoreFactory) -> None:
    store = new_store(4)
    a = commit_chain(store, "a", 1)
    b = commit_chain(store, "b", 1)
    c = commit_chain(store, "c", 1)
    d = commit_chain(store, "d", 1)
    assert store.stats().free_blocks == 0
    assert store.lookup([h("a", 0)]) == a  # a becomes the most recent
    res = store.reserve(2)
    assert sorted(blocks_of(res.extents)) == sorted(b + c)
    assert store.stats().evictions == 2
    assert store.lookup([h("b", 0)]) == [] and store.lookup([h("c", 0)]) == []
    assert store.lookup([h("a", 0)]) == a and store.lookup([h("d", 0)]) == d
    store.check_integrity()


def test_pinned_and_private_blocks_are_never_evicted(new_store: StoreFactory) -> None:
    store = new_store(6)
    hashed = commit_chain(store, "h", 4)
    res = store.reserve(2)
    store.commit(res.lease_id, blocks_of(res.extents))  # private
    pin = store.pin(hashed[:3])
    with pytest.raises(Exhausted):
        store.reserve(2)  # 0 free + 1 evictable: refused, and nothing was evicted
    assert store.stats().evictions == 0
    assert store.lookup([h("h", i) for i in range(4)]) == hashed
    assert blocks_of(store.reserve(1).extents) == [hashed[3]]
    assert store.lookup([h("h", i) for i in range(4)]) == hashed[:3]
    store.check_integrity()
    store.release(pin.lease_id)
    assert store.stats().evictable_blocks == 3
    assert store.stats().committed_blocks == 5


def test_exhausted_changes_nothing(new_store: StoreFactory) -> None:
    store = new_store(4)
    commit_chain(store, "a", 2)
    before = store.stats()
    with pytest.raises(Exhausted):
        store.reserve(5)
    assert store.stats() == before


def test_bad_arguments(new_store: StoreFactory) -> None:
    store = new_store(4)
    for n in (0, -1):
        with pytest.raises(InvalidArgument, match="num_blocks"):
            store.reserve(n)
    for lease_s in (-1.0, float("nan"), float("inf"), 1e9):
        with pytest.raises(InvalidArgument, match="lease_s"):
            store.reserve(1, lease_s=lease_s)
    with pytest.raises(InvalidArgument):
        store.release("")
    with pytest.raises(NotFound):
        store.release("r-unknown")
    with pytest.raises(InvalidArgument, match="outside"):
        store.free([-1])
    assert store.stats().active_leases == 0


def test_registration_fixes_block_size_and_model(clock: FakeClock) -> None:
    store = Store("fastswitch-test-arena", 10 * BLOCK_BYTES, clock=clock)
    with pytest.raises(Precondition, match="no worker"):
        store.reserve(1)
    assert store.layout is None
    reg = store.register_worker(worker_info("w0"))
    assert reg[:4] == ("fastswitch-test-arena", 10 * BLOCK_BYTES, BLOCK_BYTES, 10)
    # Leases name the store lifetime that granted them; another store's lifetime differs.
    assert store.reserve(1).lease_id.startswith(f"{reg.instance}:")
    other = Store("fastswitch-test-arena", 10 * BLOCK_BYTES, clock=clock)
    assert other.register_worker(worker_info("w0")).instance != reg.instance
    assert store.register_worker(worker_info("w1")) == reg
    assert store.register_worker(worker_info("w0")) == reg  # a restarted worker
    with pytest.raises(Precondition, match="block_bytes"):
        store.register_worker(worker_info("w2", block_bytes=2 * BLOCK_BYTES))
    with pytest.raises(Precondition, match="fingerprint"):
        store.register_worker(worker_info("w2", fingerprint="other-model"))
    with pytest.raises(InvalidArgument):
        store.register_worker(worker_info(""))
    with pytest.raises(InvalidArgument):
        store.register_worker(worker_info("w3", block_bytes=0))
    assert sorted(store.workers) == ["w0", "w1"]
    store.unregister_worker("w1")
    with pytest.raises(NotFound):
        store.unregister_worker("w1")
    assert store.stats().workers == 1
    store.check_integrity()


def test_arena_smaller_than_a_block(clock: FakeClock) -> None:
    store = Store("fastswitch-test-arena", BLOCK_BYTES - 1, clock=clock)
    with pytest.raises(Precondition, match="holds no block"):
        store.register_worker(worker_info())
    assert store.layout is None
    store.check_integrity()
