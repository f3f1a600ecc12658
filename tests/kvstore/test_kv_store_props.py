"""Property test: random sequences of store operations keep every invariant.

Besides ``check_integrity`` after every step, the model checks what callers rely on: a block
pinned by a live pin stays committed (never evicted or freed), a reserved block stays reserved
until its lease ends and is never visible to lookups, and a refused reserve changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from kvstore_factories import FakeClock, make_store

from kvstore_svc.errors import Exhausted, NotFound
from kvstore_svc.store import BlockState

NUM_BLOCKS = 12
HASHES = [b""] + [f"h{i}".encode() for i in range(8)]


@dataclass(slots=True)
class HeldLease:
    lease_id: str
    expires_at: float
    blocks: set[int] = field(default_factory=set)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = make_store(NUM_BLOCKS, clock=self.clock, lease_s=5.0)
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
        result = self.store.commit(lease.lease_id, chosen, hashes)
        assert result.committed + result.deduplicated == len(chosen)
        lease.blocks -= set(chosen)
        self.known |= set(chosen)
        if not lease.blocks:
            del self.reservations[lease.lease_id]

    @rule(chain=st.lists(st.sampled_from(HASHES[1:]), max_size=4))
    def lookup(self, chain: list[bytes]) -> None:
        found = self.store.lookup(chain)
        assert len(found) <= len(chain)
        for b in found:
            assert self.store.block_state(b) is BlockState.COMMITTED

    @precondition(lambda self: self.known)
    @rule(data=st.data(), lease_s=st.sampled_from([0.0, 1.0, 4.0]))
    def pin(self, data: st.DataObject, lease_s: float) -> None:
        blocks = data.draw(st.lists(st.sampled_from(sorted(self.known)), min_size=1, unique=True))
        try:
            pin = self.store.pin(blocks, lease_s=lease_s)
        except NotFound:
            return
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
        self.store.free(blocks)

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
