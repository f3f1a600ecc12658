"""Property test: random sequences of store operations keep every invariant.

Besides ``check_integrity`` after every step, the model checks what callers rely on: a block
pinned by a live pin stays committed (never evicted, expired or freed), a reserved block stays
reserved until its lease ends and is never visible to lookups, a refused reserve changes
nothing, a commit names blocks that hold its content, a pin whose expected hash does not match
pins nothing, a tenant is over its quota only when all its other retained blocks are pinned, and
after the expiry task nothing is left past its ttl.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kvstore_factories import FakeClock, make_store

from kvstore_svc.errors import Exhausted, NotFound
from kvstore_svc.store import BlockState

NUM_BLOCKS = 12
QUOTA = 3
HASHES = [b""] + [f"h{i}".encode() for i in range(8)]
TENANTS = ["a", "b"]
TTLS = [0.0, 2.0, 4.0]


@dataclass(slots=True)
class HeldLease:
    lease_id: str
    expires_at: float
    blocks: set[int] = field(default_factory=set)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = make_store(
            NUM_BLOCKS, clock=self.clock, lease_s=5.0, tenant_quota_blocks=QUOTA
        )
        self.reservations: dict[str, HeldLease] = {}
        self.pins: dict[str, HeldLease] = {}
        self.known: set[int] = set()  # blocks we committed at some point

    @rule(n=st.integers(1, 6), lease_s=st.sampled_from([0.0, 1.0, 3.0]))
    def reserve(self, n: int, lease_s: float) -> None:
        before = self.store.stats()
        try:
            res = self.store.reserve(n, lease_s=lease_s)
        except Exhausted:
            assert self.store.stats() == before
            assert n > before.free_blocks + before.evictable_blocks
            return
        blocks = {b for run in res.extents for b in run.blocks()}
        assert len(blocks) == n
        self.reservations[res.lease_id] = HeldLease(
            res.lease_id, self.clock.now + res.expires_in_s, blocks
        )

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        # Draw from insertion order, never from lease ids: they are random.
        lease = data.draw(st.sampled_from(list(self.reservations.values())))
        chosen = data.draw(st.lists(st.sampled_from(sorted(lease.blocks)), unique=True))
        hashes = [data.draw(st.sampled_from(HASHES)) for _ in chosen]
        tenant = data.draw(st.sampled_from(TENANTS))
        ttl_s = data.draw(st.sampled_from(TTLS))
        evictions = self.store.stats().evictions
        result = self.store.commit(lease.lease_id, chosen, hashes, tenant=tenant, ttl_s=ttl_s)
        if self.store.stats().evictions > evictions:
            event("quota evicted")
        assert result.committed + result.deduplicated == len(chosen)
        assert len(result.blocks) == len(chosen)
        for b, want, holder in zip(chosen, hashes, result.blocks, strict=True):
            info = self.store.committed_block(holder)
            assert info is not None and info.block_hash == want and not info.freed
            assert holder == b or want, "a private block is never deduplicated"
        lease.blocks -= set(chosen)
        self.known |= set(chosen)
        if not lease.blocks:
            del self.reservations[lease.lease_id]
        usage = {u.tenant: u.retained_blocks for u in self.store.stats().tenants}
        if usage.get(tenant, 0) > QUOTA:  # soft: only what is pinned or just committed stays
            event("tenant over its quota")
            for b in range(NUM_BLOCKS):
                info = self.store.committed_block(b)
                if info and info.block_hash and info.tenant == tenant and not info.pins:
                    assert b in result.blocks, f"block {b} of {tenant} kept over the quota"

    @rule(chain=st.lists(st.sampled_from(HASHES[1:]), max_size=4))
    def lookup(self, chain: list[bytes]) -> None:
        found = self.store.lookup(chain)
        assert len(found) <= len(chain)
        for b in found:
            assert self.store.block_state(b) is BlockState.COMMITTED

    @rule(
        chain=st.lists(st.sampled_from(HASHES[1:]), max_size=4),
        lease_s=st.sampled_from([0.0, 1.0, 4.0]),
    )
    def lookup_and_pin(self, chain: list[bytes], lease_s: float) -> None:
        found = self.store.lookup_and_pin(chain, lease_s=lease_s)
        assert (found.pin is None) == (not found.blocks)
        if found.pin is not None:
            event("lookup pinned a prefix")
            self.pins[found.pin.lease_id] = HeldLease(
                found.pin.lease_id, self.clock.now + found.pin.expires_in_s, set(found.blocks)
            )

    @precondition(lambda self: self.known)
    @rule(data=st.data(), lease_s=st.sampled_from([0.0, 1.0, 4.0]))
    def pin(self, data: st.DataObject, lease_s: float) -> None:
        blocks = data.draw(st.lists(st.sampled_from(sorted(self.known)), min_size=1, unique=True))
        expected: list[bytes] = []
        if data.draw(st.booleans()):  # the hash it holds (if any), none, or any other
            for b in blocks:
                info = self.store.committed_block(b)
                held = info.block_hash if info else b""
                expected.append(data.draw(st.sampled_from([held, b"", *HASHES[1:3]])))
        before = self.store.stats()
        try:
            pin = self.store.pin(blocks, lease_s=lease_s, block_hashes=expected)
        except NotFound:
            event("pin refused")
            after = self.store.stats()
            assert (after.pinned_blocks, after.active_leases) == (
                before.pinned_blocks,
                before.active_leases,
            )
            return
        for b, want in zip(blocks, expected, strict=False):
            info = self.store.committed_block(b)
            assert info is not None and (not want or info.block_hash == want)
        self.pins[pin.lease_id] = HeldLease(
            pin.lease_id, self.clock.now + pin.expires_in_s, set(blocks)
        )

    @precondition(lambda self: self.reservations or self.pins)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        held = [*self.reservations.values(), *self.pins.values()]
        lease = data.draw(st.sampled_from(held))
        assert self.store.release(lease.lease_id) == len(lease.blocks)
        self.reservations.pop(lease.lease_id, None)
        self.pins.pop(lease.lease_id, None)

    @precondition(lambda self: self.known)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        blocks = data.draw(st.lists(st.sampled_from(sorted(self.known)), unique=True))
        hashes = data.draw(st.lists(st.sampled_from(HASHES), max_size=3))
        freed = self.store.free(blocks, block_hashes=hashes)
        assert freed <= len(blocks) + len(hashes)
        for h in hashes:
            assert self.store.lookup([h]) == [], f"{h!r} still indexed after its free"

    @rule(dt=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
    def tick(self, dt: float) -> None:
        self.clock.advance(dt)
        ended = self.store.expire()
        due = [
            x
            for x in [*self.reservations.values(), *self.pins.values()]
            if x.expires_at <= self.clock.now
        ]
        assert ended == len(due)
        for lease in due:
            self.reservations.pop(lease.lease_id, None)
            self.pins.pop(lease.lease_id, None)
        expired = self.store.stats().expired_blocks
        if expired:
            event("blocks expired")
        assert self.store.expire() == 0
        assert self.store.stats().expired_blocks == expired, "blocks past their ttl were left"

    @invariant()
    def consistent(self) -> None:
        self.store.check_integrity()
        for pin in self.pins.values():
            for b in pin.blocks:
                assert self.store.block_state(b) is BlockState.COMMITTED, f"pinned {b} lost"
        for res in self.reservations.values():
            for b in res.blocks:
                assert self.store.block_state(b) is BlockState.RESERVED
        s = self.store.stats()
        assert s.active_leases == len(self.reservations) + len(self.pins)
        assert s.free_blocks + s.reserved_blocks + s.committed_blocks == NUM_BLOCKS


StoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_store_machine = StoreMachine.TestCase
