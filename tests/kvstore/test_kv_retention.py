"""Retained KV in the store core (docs/architecture.md, swap rules 4-7): canonical blocks on commit,
ttl, lookup and pin in one call, pins that check the content, free by hash, per-tenant quotas.
The ``new_store`` fixture checks every store's integrity after each test."""

from __future__ import annotations

import logging

import pytest
from kvstore_factories import FakeClock, StoreFactory, blocks_of, commit_chain, h, make_store

from kvstore_svc.errors import Exhausted, InvalidArgument, NotFound
from kvstore_svc.store import Store, TenantUsage


def chain(prefix: str, n: int) -> list[bytes]:
    return [h(prefix, i) for i in range(n)]


# ------------------------------------------------------------------ commit answers holders


def test_commit_names_the_block_holding_each_content(new_store: StoreFactory) -> None:
    store = new_store(8)
    first = commit_chain(store, "p", 2)
    res = store.reserve(4)
    new = blocks_of(res.extents)
    result = store.commit(res.lease_id, new, [h("p", 0), h("q", 0), h("p", 1), b""])
    assert result.blocks == [first[0], new[1], first[1], new[3]]
    assert (result.committed, result.deduplicated) == (2, 2)
    twice = store.reserve(2)
    pair = blocks_of(twice.extents)
    result = store.commit(twice.lease_id, pair, [h("r"), h("r")])
    assert result.blocks == [pair[0], pair[0]]  # the second copy is the first's duplicate
    assert store.stats().committed_blocks == 5


# -------------------------------------------------------------------------------- ttl


def test_ttl_runs_from_the_last_use(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 2, tenant="t", ttl_s=10)
    clock.advance(9.9)
    store.expire()
    assert store.lookup(chain("c", 2)) == blocks  # a use: the ttl starts again
    clock.advance(9.9)
    assert store.expire() == 0  # leases ended: none
    assert store.stats().committed_blocks == 2
    clock.advance(0.1)
    store.expire()
    s = store.stats()
    assert (s.expired_blocks, s.committed_blocks, s.free_blocks, s.evictions) == (2, 0, 8, 0)
    assert s.tenants == ()
    assert store.lookup(chain("c", 2)) == []


def test_ttl_zero_and_private_blocks_never_expire(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    store = new_store(8)
    forever = commit_chain(store, "f", 2, ttl_s=0)
    res = store.reserve(1)
    [private] = blocks_of(res.extents)
    store.commit(res.lease_id, [private], [b""], ttl_s=1)
    info = store.committed_block(private)
    assert info is not None and info.ttl_s == 0  # a ttl only applies to hashed blocks
    clock.advance(1e6)
    store.expire()
    assert store.stats().expired_blocks == 0
    assert store.lookup(chain("f", 2)) == forever
    assert store.block_state(private) == "committed"


def test_calls_never_see_a_block_past_its_ttl(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(8)
    commit_chain(store, "c", 2, ttl_s=5)
    clock.advance(5)  # the periodic task has not run yet
    assert store.lookup(chain("c", 2)) == []
    assert store.stats().expired_blocks == 2
    again = commit_chain(store, "c", 2, ttl_s=5)
    clock.advance(5)
    with pytest.raises(NotFound):
        store.pin(again)
    assert store.free(block_hashes=chain("c", 2)) == 0  # already expired: nothing to free
    assert store.stats().expired_blocks == 4


def test_pinned_blocks_do_not_age(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 2, ttl_s=3)
    pin = store.pin(blocks, lease_s=100)
    clock.advance(50)
    store.expire()
    assert store.stats().expired_blocks == 0
    store.release(pin.lease_id)  # the end of the pin is the last use
    clock.advance(2.9)
    store.expire()
    assert store.lookup(chain("c", 1)) == blocks[:1]  # refreshes c/0 only
    clock.advance(0.1)
    store.expire()
    assert store.lookup(chain("c", 2)) == blocks[:1]  # c/1 expired
    assert store.stats().expired_blocks == 1


def test_a_pin_ending_by_expiry_restarts_the_ttl(new_store: StoreFactory, clock: FakeClock) -> None:
    store = new_store(4)
    blocks = commit_chain(store, "c", 1, ttl_s=3)
    store.pin(blocks, lease_s=5)
    clock.advance(5)
    assert store.expire() == 1  # the pin ends now; the block is 0 s old, not 5
    assert store.stats().committed_blocks == 1
    clock.advance(3)
    store.expire()
    assert store.stats().expired_blocks == 1


def test_a_duplicate_commit_keeps_the_longer_retention(
    new_store: StoreFactory, clock: FakeClock
) -> None:
    store = new_store(8)
    [b] = commit_chain(store, "c", 1, ttl_s=5)

    def ttl() -> float:
        info = store.committed_block(b)
        assert info is not None
        return info.ttl_s

    commit_chain(store, "c", 1, ttl_s=20)
    assert ttl() == 20
    commit_chain(store, "c", 1, ttl_s=1)
    assert ttl() == 20
    clock.advance(19.9)  # the duplicate commit was a use
    store.expire()
    assert store.stats().expired_blocks == 0
    commit_chain(store, "c", 1, ttl_s=0)
    assert ttl() == 0  # no expiry is the longest
    commit_chain(store, "c", 1, ttl_s=7)
    assert ttl() == 0


def test_bad_ttl_changes_nothing(new_store: StoreFactory) -> None:
    store = new_store(4)
    res = store.reserve(1)
    for ttl_s in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument, match="ttl_s"):
            store.commit(res.lease_id, blocks_of(res.extents), [h(1)], ttl_s=ttl_s)
    assert store.stats().reserved_blocks == 1


# --------------------------------------------------------------------- lookup and pin


def test_lookup_and_pin_protects_the_prefix_from_eviction(new_store: StoreFactory) -> None:
    store = new_store(4)
    blocks = commit_chain(store, "c", 4)
    found = store.lookup_and_pin([*chain("c", 2), h("other")], lease_s=7, owner="w1")
    assert found.blocks == blocks[:2]
    assert found.pin is not None and found.pin.expires_in_s == 7
    s = store.stats()
    assert (s.pinned_blocks, s.evictable_blocks, s.active_leases) == (2, 2, 1)
    assert (s.lookups, s.lookup_hit_blocks) == (1, 2)
    assert blocks_of(store.reserve(2).extents) == blocks[2:]  # only the unpinned went
    with pytest.raises(Exhausted):
        store.reserve(1)
    assert store.lookup(chain("c", 2)) == blocks[:2]
    assert store.release(found.pin.lease_id) == 2
    assert store.stats().evictable_blocks == 2


def test_lookup_and_pin_with_nothing_found_opens_no_lease(new_store: StoreFactory) -> None:
    store = new_store(4)
    commit_chain(store, "c", 2)
    found = store.lookup_and_pin([h("nope"), h("c", 0)])
    assert found.blocks == [] and found.pin is None
    assert store.stats().active_leases == 0
    with pytest.raises(InvalidArgument, match="lease_s"):
        store.lookup_and_pin(chain("c", 2), lease_s=-1)
    s = store.stats()
    assert (s.lookups, s.pinned_blocks, s.active_leases) == (1, 0, 0)  # refused before looking


# --------------------------------------------------------------- pins check the content


def evicted_and_reused(store: Store) -> list[int]:
    """A 2-block store: ``a/0 a/1`` committed, then evicted; the same ids now hold ``b``."""
    a = commit_chain(store, "a", 2)
    b = commit_chain(store, "b", 2)
    assert sorted(a) == sorted(b) and store.stats().evictions == 2
    return a


def test_pin_of_reused_blocks_is_not_found_and_pins_nothing(new_store: StoreFactory) -> None:
    store = new_store(2)
    blocks = evicted_and_reused(store)
    with pytest.raises(NotFound, match=f"block {blocks[0]} no longer holds"):
        store.pin(blocks, block_hashes=chain("a", 2))
    with pytest.raises(NotFound, match=f"block {blocks[1]} no longer holds"):
        store.pin(blocks, block_hashes=[h("b", 0), h("a", 1)])
    s = store.stats()
    assert (s.pinned_blocks, s.active_leases) == (0, 0)
    assert store.pin(blocks, block_hashes=[b"", h("b", 1)]).expires_in_s == 30
    assert store.pin(blocks, block_hashes=chain("b", 2)).expires_in_s == 30
    assert store.stats().pinned_blocks == 2


def test_pin_checks_hashes_of_private_and_free_blocks(new_store: StoreFactory) -> None:
    store = new_store(4)
    res = store.reserve(1)
    [private] = blocks_of(res.extents)
    store.commit(res.lease_id, [private])
    with pytest.raises(NotFound, match=f"block {private}"):
        store.pin([private], block_hashes=[h("x")])
    with pytest.raises(NotFound, match="block 3 is not committed"):
        store.pin([3], block_hashes=[h("x")])
    with pytest.raises(InvalidArgument, match="hashes"):
        store.pin([private], block_hashes=[b"", b""])
    assert store.pin([private], block_hashes=[b""]).lease_id  # empty entry: not checked


# ---------------------------------------------------------------------- free by hash


def test_free_by_hash(new_store: StoreFactory) -> None:
    store = new_store(8)
    blocks = commit_chain(store, "c", 3, tenant="t")
    pin = store.pin([blocks[1]])
    freed = store.free(block_hashes=[*chain("c", 3), h("unknown"), b""])
    assert freed == 3  # pinned or not; unknown and empty hashes skipped
    s = store.stats()
    assert (s.committed_blocks, s.free_blocks, s.pinned_blocks, s.tenants) == (1, 7, 1, ())
    assert store.lookup(chain("c", 1)) == []
    store.release(pin.lease_id)  # the freed pinned block goes with its last pin
    assert store.stats().free_blocks == 8
    again = commit_chain(store, "d", 2)
    assert store.free([again[0]], block_hashes=chain("d", 2)) == 2  # each block counted once


# ---------------------------------------------------------------------------- quotas


def usage(store: Store) -> dict[str, int]:
    return {u.tenant: u.retained_blocks for u in store.stats().tenants}


def test_quota_evicts_the_tenants_own_lru_blocks(new_store: StoreFactory) -> None:
    store = new_store(16, tenant_quota_blocks=4)
    other = commit_chain(store, "o", 3, tenant="B")  # older, but another tenant's
    a = commit_chain(store, "a", 2, tenant="A")
    c = commit_chain(store, "c", 2, tenant="A")
    assert store.lookup(chain("a", 2)) == a  # a is now more recent than c
    d = commit_chain(store, "d", 1, tenant="A")
    s = store.stats()
    assert s.tenants == (TenantUsage("A", 4, 4), TenantUsage("B", 3, 4))
    assert s.evictions == 1
    # A's least recently used block went: the end of chain c (its root c/0 stays usable).
    assert store.lookup(chain("c", 2)) == [c[0]]
    assert store.committed_block(c[1]) is None
    assert store.lookup(chain("o", 3)) == other
    assert store.lookup(chain("a", 2)) == a and store.lookup(chain("d", 1)) == d
    assert (s.evictable_blocks, s.committed_blocks) == (7, 7)


def test_duplicates_and_private_blocks_are_not_charged(new_store: StoreFactory) -> None:
    store = new_store(16, tenant_quota_blocks=2)
    commit_chain(store, "a", 2, tenant="A")
    commit_chain(store, "a", 2, tenant="A")  # duplicates: nothing new to charge
    res = store.reserve(3)
    store.commit(res.lease_id, blocks_of(res.extents), tenant="A")  # private
    assert usage(store) == {"A": 2}
    assert store.stats().evictions == 0


def test_quota_is_soft_against_pins_and_logged(
    new_store: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store(16, tenant_quota_blocks=2)
    a = commit_chain(store, "a", 2, tenant="A")
    pin = store.pin(a)
    with caplog.at_level(logging.INFO, logger="kvstore_svc.store"):
        b = commit_chain(store, "b", 2, tenant="A")
    assert "over its retention quota" in caplog.text
    assert usage(store) == {"A": 4} and store.stats().evictions == 0
    store.release(pin.lease_id)  # a is used last now: b is A's least recently used
    c = commit_chain(store, "c", 1, tenant="A")
    assert usage(store) == {"A": 2} and store.stats().evictions == 3
    assert [store.committed_block(x) is not None for x in [*b, *a, *c]] == [
        False,
        False,
        False,
        True,
        True,
    ]


def test_a_commit_larger_than_the_quota_is_kept(new_store: StoreFactory) -> None:
    store = new_store(16, tenant_quota_blocks=2)
    old = commit_chain(store, "old", 1, tenant="A")
    big = commit_chain(store, "big", 3, tenant="A")
    assert usage(store) == {"A": 3}  # the old block went, the commit's own stayed
    assert store.committed_block(old[0]) is None
    assert store.lookup(chain("big", 3)) == big


def test_a_freed_pinned_block_stops_counting_at_once(new_store: StoreFactory) -> None:
    store = new_store(16, tenant_quota_blocks=2)
    a = commit_chain(store, "a", 2, tenant="A")
    store.pin(a)
    store.free(a)
    assert usage(store) == {}
    commit_chain(store, "b", 2, tenant="A")
    assert usage(store) == {"A": 2} and store.stats().evictions == 0


def test_stats_without_quota_and_bad_quota(new_store: StoreFactory) -> None:
    store = new_store(8)
    commit_chain(store, "x", 2, tenant="")
    commit_chain(store, "y", 1, tenant="z")
    assert store.stats().tenants == (TenantUsage("", 2, 0), TenantUsage("z", 1, 0))
    with pytest.raises(ValueError, match="-1"):
        make_store(4, tenant_quota_blocks=-1)


def test_eviction_trims_a_chain_from_its_end_so_the_prefix_stays_usable(new_store):
    """Blocks committed (or looked up) together age deepest-first: LRU keeps the root."""
    store = new_store(num_blocks=4)
    commit_chain(store, "conv", 3)
    chain = [h("conv", i) for i in range(3)]
    assert len(store.lookup(chain)) == 3
    filler = store.reserve(3)  # needs 2 of the 3 retained blocks: evicts from the chain's end
    assert len(store.lookup(chain)) == 1
    store.release(filler.lease_id)
