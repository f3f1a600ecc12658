"""The KV store core: who holds which host block of the arena. No gRPC; tests drive it directly.

Every host block is in exactly one state::

                reserve                    commit
      FREE ───────────────▶ RESERVED ───────────────▶ COMMITTED  (+ pins: one per pin lease)
       ▲ ▲ ▲                  │  │                      │ │ │
       │ │ └ release / expiry ┘  │                      │ │ │
       │ └── commit of a hash ───┘                      │ │ │
       │     already committed (the duplicate copy)     │ │ │
       ├──── free (pinned: when its last pin ends) ─────┘ │ │
       ├──── evict (hashed, unpinned, LRU: reserve, quota)┘ │
       └──── expire (hashed, unpinned, past its ttl) ───────┘

* RESERVED blocks belong to one reservation lease and are invisible to :meth:`Store.lookup`
  (docs/architecture.md, swap rule 4); the writer copies into them, then commits.
* COMMITTED blocks (hashed or private), pins and retained blocks: :mod:`kvstore_svc.committed`.
* Eviction happens inside :meth:`Store.reserve`, only when the free space is short and only if
  evicting every evictable block would be enough (count first, then change); and inside
  :meth:`Store.commit` for a tenant over its quota (below).
* Retention ttl: a hashed block committed with ``ttl_s > 0`` is dropped (``expired_blocks``)
  once ``ttl_s`` has passed since its last use while unpinned. :meth:`Store.expire` (the
  periodic task) drops what is due; lookup, pin, commit and free drop it first too, so no call
  ever sees a block past its ttl whatever the timer. A duplicate commit keeps the longer
  retention of the two (0, no expiry, is the longest).
* Tenant quota (``tenant_quota_blocks``, 0 = none): every indexed hashed block is charged to
  the tenant that committed it first (pinned ones too; a freed one stops counting at once).
  After a commit leaves its tenant over the quota, the tenant's own least recently used
  retained blocks are evicted, never the blocks that commit just made or reused. The quota is
  soft: what is still over it (everything else pinned, or one commit larger than the quota) is
  kept, logged, and evicted by the tenant's next commit if unpinned by then.

The block size is unknown until the first :meth:`Store.register_worker`; it fixes
``block_bytes`` and the model fingerprint for the store's life. Every call either succeeds or
raises a :class:`~kvstore_svc.errors.StoreError` having changed nothing (except that an overdue
lease it names, and retained blocks past their ttl, end then, as the timer would have ended
them). Not thread-safe: one event loop calls it; :meth:`Store.stats` only reads counters, so
a metrics thread may call it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence

from kvstore_svc.arena import ArenaLayout
from kvstore_svc.checks import MAX_HASH_BYTES as MAX_HASH_BYTES
from kvstore_svc.checks import block_runs, check_blocks, check_commit, lease_duration
from kvstore_svc.committed import CommittedBlocks
from kvstore_svc.errors import Exhausted, InvalidArgument, NotFound, Precondition
from kvstore_svc.leases import Lease, LeaseKind, LeaseTable
from kvstore_svc.records import (
    BlockInfo,
    BlockState,
    CommitResult,
    PinLease,
    PinnedPrefix,
    Registration,
    Reservation,
    StoreStats,
    TenantUsage,
    WorkerInfo,
)
from kvstore_svc.records import PoolKind as PoolKind  # re-exported, as are the other records
from kvstore_svc.workers import WorkerRegistry
from servekit.runs import BlockRun, RunAllocator

log = logging.getLogger(__name__)


class Store:
    """Host blocks of one arena: allocation, leases, the content index, pins and eviction."""

    def __init__(
        self,
        arena_name: str,
        arena_bytes: int,
        *,
        default_lease_s: float = 30.0,
        max_lease_s: float = 3600.0,
        tenant_quota_blocks: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < default_lease_s <= max_lease_s:
            raise ValueError(f"default lease {default_lease_s}s not in (0, {max_lease_s}]")
        if tenant_quota_blocks < 0:
            raise ValueError(f"tenant quota must be >= 0 blocks, got {tenant_quota_blocks}")
        self._arena_name = arena_name
        self._arena_bytes = arena_bytes
        self._default_lease_s = default_lease_s
        self._max_lease_s = max_lease_s
        self._quota = tenant_quota_blocks
        self._clock = clock
        self._alloc = RunAllocator(0)
        self._workers = WorkerRegistry(arena_bytes)
        self._leases = LeaseTable(uuid.uuid4().hex[:12])  # this lifetime's id
        self._reserved: dict[int, str] = {}  # block -> reservation lease id
        self._committed = CommittedBlocks(self._release_block)
        self._expired_leases = 0
        self._lookups = 0
        self._lookup_hit_blocks = 0

    @property
    def layout(self) -> ArenaLayout | None:
        """Fixed by the first registration; ``None`` before."""
        return self._workers.layout

    @property
    def tenant_quota_blocks(self) -> int:
        """Retained blocks each tenant may keep; 0 = no quota."""
        return self._quota

    @property
    def workers(self) -> dict[str, WorkerInfo]:
        return self._workers.workers

    # ------------------------------------------------------------------ workers

    def register_worker(self, info: WorkerInfo) -> Registration:
        """Registers (or re-registers) a worker; the first one fixes the block size and model.

        ``Precondition`` when ``block_bytes`` or the fingerprint differ from the first
        registration's, or when the arena cannot hold one block.
        """
        layout = self._workers.admit(info)
        if self._workers.layout is None:
            self._alloc = RunAllocator(layout.num_blocks)
            log.info(
                "arena layout fixed",
                extra={"block_bytes": layout.block_bytes, "num_host_blocks": layout.num_blocks},
            )
        if self._workers.add(info, layout):
            log.info("worker re-registered", extra={"worker_id": info.worker_id})
        return Registration(
            self._arena_name,
            self._arena_bytes,
            layout.block_bytes,
            layout.num_blocks,
            self._leases.instance,
        )

    def unregister_worker(self, worker_id: str) -> None:
        """Forgets a worker (its leases run out on their own). ``NotFound`` if unknown."""
        self._workers.remove(worker_id)

    # ---------------------------------------------------------------- writing

    def reserve(self, num_blocks: int, *, lease_s: float = 0.0, owner: str = "") -> Reservation:
        """Takes ``num_blocks`` free blocks in as few extents as possible, under a new lease.

        When free space is short, evicts least recently used retained blocks first;
        ``Exhausted`` (nothing evicted) when even that would not be enough.
        """
        layout = self._require_layout()
        if num_blocks <= 0:
            raise InvalidArgument(f"num_blocks must be > 0, got {num_blocks}")
        duration = self._lease_duration(lease_s)
        available = self._alloc.num_free + self._committed.num_retained
        if num_blocks > available:
            raise Exhausted(
                f"{num_blocks} blocks asked; {self._alloc.num_free} free + "
                f"{self._committed.num_retained} evictable of {layout.num_blocks}"
            )
        while self._alloc.num_free < num_blocks:
            oldest = self._committed.oldest_retained()
            assert oldest is not None, "evictable blocks were counted"
            self._committed.evict(oldest)
        runs = self._alloc.allocate(num_blocks)
        assert runs is not None, "free space was counted"
        blocks = {b for run in runs for b in run.blocks()}
        lease = self._leases.open(LeaseKind.RESERVATION, owner, self._clock() + duration, blocks)
        for b in blocks:
            self._reserved[b] = lease.lease_id
        return Reservation(lease.lease_id, runs, duration)

    def commit(
        self,
        lease_id: str,
        blocks: Sequence[int],
        block_hashes: Sequence[bytes] = (),
        *,
        tenant: str = "",
        ttl_s: float = 0.0,
    ) -> CommitResult:
        """Makes written blocks of a reservation visible; they leave the reservation.

        ``block_hashes`` is parallel to ``blocks`` (or empty: all private). A hash already
        committed keeps its existing block (a use of it; the longer ttl of the two wins); the
        new copy goes back to the free space, and ``CommitResult.blocks`` names the block that
        holds each one's content. New hashed blocks are charged to ``tenant`` and expire
        ``ttl_s`` after their last use (0 = never; private blocks never expire). The lease ends
        when its last reserved block is committed. Then, if ``tenant`` is over its quota, its
        least recently used retained blocks other than this commit's are evicted.
        """
        lease = self._live_lease(lease_id)
        if lease.kind is not LeaseKind.RESERVATION:
            raise Precondition(f"lease {lease_id} is a {lease.kind}, not a reservation")
        hashes = check_commit(blocks, block_hashes, ttl_s, self._num_blocks())
        for b in blocks:
            if b not in lease.blocks:
                raise Precondition(f"block {b} is not an uncommitted block of lease {lease_id}")
        now = self._clock()
        self._expire_retained(now)
        holders: list[int] = []
        fresh: list[int] = []
        for b, h in zip(blocks, hashes, strict=True):
            lease.blocks.remove(b)
            del self._reserved[b]
            existing = self._committed.holder(h)
            if existing is not None:
                self._alloc.release(BlockRun(b, 1))
                self._committed.reuse(existing, ttl_s, now)
                holders.append(existing)
                continue
            self._committed.add(b, h, tenant, ttl_s)
            if h:
                fresh.append(b)
            holders.append(b)
        # Deepest first (see lookup): a chain is evicted from its end, never from its root.
        for b in reversed(fresh):
            self._committed.retain(b, now)
        if not lease.blocks:
            self._leases.close(lease)
        if self._quota:
            self._enforce_quota(tenant, keep=set(holders))
        kept = sum(1 for b, holder in zip(blocks, holders, strict=True) if b == holder)
        return CommitResult(kept, len(blocks) - kept, holders)

    # ---------------------------------------------------------------- reading

    def lookup(self, block_hashes: Sequence[bytes]) -> list[int]:
        """Blocks of the longest committed prefix of the hash chain; a use of each (recency
        and ttl restart)."""
        now = self._clock()
        self._expire_retained(now)
        self._lookups += 1
        found: list[int] = []
        for h in block_hashes:
            b = self._committed.holder(h)
            if b is None:
                break
            found.append(b)
        # Deepest first, so that the root is the most recent: eviction trims a chain from its
        # end and what is left is still a usable prefix.
        for b in reversed(found):
            self._committed.touch(b, now)
        self._lookup_hit_blocks += len(found)
        return found

    def lookup_and_pin(
        self, block_hashes: Sequence[bytes], *, lease_s: float = 0.0, owner: str = ""
    ) -> PinnedPrefix:
        """:meth:`lookup`, then pins what it found under a new lease in the same call, so no
        eviction can come between. Nothing found: no lease (``pin`` is ``None``)."""
        duration = self._lease_duration(lease_s)
        found = self.lookup(block_hashes)
        if not found:
            return PinnedPrefix([], None)
        return PinnedPrefix(found, self._pin(set(found), duration, owner))

    def pin(
        self,
        blocks: Sequence[int],
        *,
        lease_s: float = 0.0,
        owner: str = "",
        block_hashes: Sequence[bytes] = (),
    ) -> PinLease:
        """Pins committed blocks under a new lease (all or none). ``NotFound`` names a block that
        is not committed (evicted, freed, or still only reserved) or, when ``block_hashes``
        (parallel to ``blocks``; an empty entry is not checked) expects a hash, does not hold
        it (evicted and reused since)."""
        self._require_layout()
        if not blocks:
            raise InvalidArgument("no blocks to pin")
        self._check_unique(blocks)
        if block_hashes and len(block_hashes) != len(blocks):
            raise InvalidArgument(f"{len(blocks)} blocks but {len(block_hashes)} hashes")
        duration = self._lease_duration(lease_s)
        self._expire_retained(self._clock())
        self._committed.check_pinnable(blocks, block_hashes)
        return self._pin(set(blocks), duration, owner)

    # ------------------------------------------------------------------ ending

    def release(self, lease_id: str) -> int:
        """Ends a lease: a reservation's uncommitted blocks become free, a pin's pins drop.
        Returns how many blocks the lease still held. ``NotFound`` if unknown or expired."""
        lease = self._live_lease(lease_id)
        held = len(lease.blocks)
        self._end(lease)
        return held

    def free(self, blocks: Sequence[int] = (), *, block_hashes: Sequence[bytes] = ()) -> int:
        """Drops committed blocks, by id and by content hash (the block indexed under it).

        Blocks not committed (evicted, expired, already freed) and unknown hashes are skipped.
        A pinned block leaves the index now (and stops counting against its tenant) and the
        free space gets it with its last pin. Returns how many blocks were dropped.
        """
        self._require_layout()
        self._check_unique(blocks)
        self._expire_retained(self._clock())
        dropped = sum(self._committed.free(b) for b in blocks)
        for h in block_hashes:
            b = self._committed.holder(h)
            if b is not None:
                dropped += self._committed.free(b)
        return dropped

    def expire(self, now: float | None = None) -> int:
        """Ends every lease whose expiry is ``<= now`` (default: the store's clock), then drops
        the retained blocks whose ttl has run out by ``now``. Returns the leases ended."""
        now = self._clock() if now is None else now
        due = self._leases.due(now)
        for lease in due:
            self._end(lease, expired=True, now=now)
        self._expire_retained(now)
        return len(due)

    # ------------------------------------------------------------------ status

    def stats(self) -> StoreStats:
        layout = self._workers.layout
        charged = self._committed.charges()  # a copy: safe against the loop's writes
        return StoreStats(
            num_host_blocks=layout.num_blocks if layout else 0,
            free_blocks=self._alloc.num_free,
            reserved_blocks=len(self._reserved),
            committed_blocks=len(self._committed),
            pinned_blocks=self._committed.num_pinned,
            evictable_blocks=self._committed.num_retained,
            active_leases=len(self._leases),
            expired_leases=self._expired_leases,
            workers=len(self._workers),
            lookups=self._lookups,
            lookup_hit_blocks=self._lookup_hit_blocks,
            evictions=self._committed.evictions,
            block_bytes=layout.block_bytes if layout else 0,
            arena_name=self._arena_name,
            expired_blocks=self._committed.expired_blocks,
            tenants=tuple(TenantUsage(t, n, self._quota) for t, n in sorted(charged.items())),
            arena_bytes=self._arena_bytes,
        )

    def block_state(self, block: int) -> BlockState:
        """The state of one host block (for tests and debugging)."""
        self._check_unique([block])
        if block in self._reserved:
            return BlockState.RESERVED
        return BlockState.COMMITTED if block in self._committed else BlockState.FREE

    def committed_block(self, block: int) -> BlockInfo | None:
        """What the store holds in a committed block; ``None`` if it is not committed."""
        cb = self._committed.get(block)
        if cb is None:
            return None
        return BlockInfo(cb.block_hash, cb.tenant, cb.ttl_s, cb.pins, cb.freed)

    def check_integrity(self) -> None:
        """``AssertionError`` unless every block is in exactly one state and all views agree."""
        self._alloc.check_integrity()
        self._leases.check_integrity()
        n = self._num_blocks()
        reserved, committed = set(self._reserved), set(self._committed)
        assert not reserved & committed, f"reserved and committed: {reserved & committed}"
        for b in reserved | committed:
            assert 0 <= b < n, f"block {b} out of range"
            assert not self._alloc.is_free(b), f"block {b} held but free in the allocator"
        total = self._alloc.num_free + len(reserved) + len(committed)
        assert total == n, f"free+reserved+committed = {total} != {n}"
        pins: dict[int, int] = {}
        for lease in self._leases:
            assert lease.blocks, f"lease {lease.lease_id} holds nothing"
            for b in lease.blocks:
                if lease.kind is LeaseKind.RESERVATION:
                    assert self._reserved.get(b) == lease.lease_id, f"block {b} not in its lease"
                else:
                    assert b in committed, f"pin on block {b}, which is not committed"
                    pins[b] = pins.get(b, 0) + 1
        held = sum(len(x.blocks) for x in self._leases if x.kind is LeaseKind.RESERVATION)
        assert held == len(reserved), "reserved blocks outside any reservation"
        self._committed.check_integrity(pins)

    # ----------------------------------------------------------------- private

    def _require_layout(self) -> ArenaLayout:
        layout = self._workers.layout
        if layout is None:
            raise Precondition("no worker registered yet: the block size is unknown")
        return layout

    def _num_blocks(self) -> int:
        layout = self._workers.layout
        return layout.num_blocks if layout else 0

    def _lease_duration(self, lease_s: float) -> float:
        return lease_duration(lease_s, self._default_lease_s, self._max_lease_s)

    def _check_unique(self, blocks: Sequence[int]) -> None:
        check_blocks(blocks, self._num_blocks())

    def _live_lease(self, lease_id: str) -> Lease:
        """The lease, or ``NotFound``; a lease past its expiry ends here, whatever the timer."""
        if not lease_id:
            raise InvalidArgument("lease_id is empty")
        lease = self._leases.get(lease_id)
        if lease is None:
            raise NotFound(f"no lease {lease_id!r} (released, expired or fully committed)")
        if lease.expires_at <= self._clock():
            self._end(lease, expired=True)
            raise NotFound(f"lease {lease_id!r} expired")
        return lease

    def _end(self, lease: Lease, *, expired: bool = False, now: float | None = None) -> None:
        self._leases.close(lease)
        if expired:
            self._expired_leases += 1
            log.info(
                "lease expired",
                extra={"lease_id": lease.lease_id, "kind": str(lease.kind), "owner": lease.owner},
            )
        if lease.kind is LeaseKind.RESERVATION:
            for b in lease.blocks:
                del self._reserved[b]
            for run in block_runs(lease.blocks):
                self._alloc.release(run)
            return
        now = self._clock() if now is None else now
        for b in lease.blocks:
            self._committed.unpin(b, now)

    def _pin(self, blocks: set[int], duration: float, owner: str) -> PinLease:
        """Pins checked committed blocks: they stop being retained (no eviction, no ageing)."""
        self._committed.pin(blocks)
        lease = self._leases.open(LeaseKind.PIN, owner, self._clock() + duration, blocks)
        return PinLease(lease.lease_id, duration)

    def _enforce_quota(self, tenant: str, keep: set[int]) -> None:
        """Evicts the tenant's least recently used retained blocks, never those in ``keep``,
        until it is within its quota or nothing more can go (soft quota: logged)."""
        if self._committed.evict_over_quota(tenant, self._quota, keep):
            log.info(
                "tenant over its retention quota; the rest is pinned or just committed",
                extra={
                    "tenant": tenant,
                    "retained_blocks": self._committed.charged(tenant),
                    "quota_blocks": self._quota,
                },
            )

    def _expire_retained(self, now: float) -> None:
        """Drops the retained blocks whose ttl has run out by ``now``."""
        due = self._committed.expire(now)
        if due:
            log.debug("retained blocks expired", extra={"blocks": due})

    def _release_block(self, b: int) -> None:
        """A committed block goes back to the free space."""
        self._alloc.release(BlockRun(b, 1))
