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
  (DESIGN.md rule 4); the writer copies into them, then commits.
* COMMITTED blocks are either *hashed* (content-addressed: found by :meth:`Store.lookup`,
  deduplicated on commit, evictable) or *private* (empty hash: only their owner knows the id;
  never evicted, since handing a private block's id to another writer would let its owner read
  someone else's KV later; the owner drops it with :meth:`Store.free`).
* Pins are per-lease counts on committed blocks. A pinned block is never evicted or freed; a
  :meth:`Store.free` of a pinned block removes it from the index at once (no new readers) and
  returns it to the free space when its last pin ends.
* Hashed, unpinned committed blocks are *retained* (:mod:`kvstore_svc.retention`): the only
  evictable ones. A lookup hit, a duplicate commit and the end of the last pin count as a use
  (recency and ttl restart); a pinned block does not age.
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
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from kvstore_svc.arena import ArenaLayout
from kvstore_svc.errors import Exhausted, InvalidArgument, NotFound, Precondition
from kvstore_svc.leases import Lease, LeaseKind, LeaseTable
from kvstore_svc.retention import RetainedBlocks
from servekit.runs import BlockRun, RunAllocator

log = logging.getLogger(__name__)

MAX_HASH_BYTES = 128


class BlockState(StrEnum):
    FREE = "free"
    RESERVED = "reserved"
    COMMITTED = "committed"


class PoolKind(StrEnum):
    """How another process maps a worker's device pool."""

    SHM = "shm"
    CUDA_IPC = "cuda_ipc"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    model_fingerprint: str
    block_bytes: int
    device: str
    pool_kind: PoolKind
    pool_handle: bytes
    pool_blocks: int


@dataclass(slots=True)
class CommittedBlock:
    block_hash: bytes  # b"" = private
    tenant: str
    ttl_s: float = 0.0  # retention ttl of a hashed block; 0 = no expiry (always 0 when private)
    pins: int = 0
    freed: bool = False  # Free asked while pinned: goes back to free space with the last pin


class Registration(NamedTuple):
    arena_name: str
    arena_bytes: int
    block_bytes: int
    num_host_blocks: int


class Reservation(NamedTuple):
    lease_id: str
    extents: list[BlockRun]  # as few as the free space allows, in allocation order
    expires_in_s: float


class PinLease(NamedTuple):
    lease_id: str
    expires_in_s: float


class CommitResult(NamedTuple):
    committed: int  # blocks now committed under their own id
    deduplicated: int  # blocks whose hash was already committed: returned to free space
    blocks: list[int]  # parallel to the request: the block now holding each one's content


class PinnedPrefix(NamedTuple):
    blocks: list[int]  # the longest committed prefix, as :meth:`Store.lookup` finds it
    pin: PinLease | None  # its pin; None when nothing was found


class BlockInfo(NamedTuple):
    """What the store knows of one committed block (for tests and debugging)."""

    block_hash: bytes
    tenant: str
    ttl_s: float
    pins: int
    freed: bool


class TenantUsage(NamedTuple):
    tenant: str
    retained_blocks: int  # indexed hashed blocks charged to the tenant, pinned ones included
    quota_blocks: int  # 0 = no quota


class StoreStats(NamedTuple):
    num_host_blocks: int
    free_blocks: int
    reserved_blocks: int
    committed_blocks: int
    pinned_blocks: int
    evictable_blocks: int
    active_leases: int
    expired_leases: int
    workers: int
    lookups: int
    lookup_hit_blocks: int
    evictions: int
    block_bytes: int
    arena_name: str
    expired_blocks: int
    tenants: tuple[TenantUsage, ...]  # tenants charged for at least one block, by name


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
        self._layout: ArenaLayout | None = None
        self._fingerprint = ""
        self._alloc = RunAllocator(0)
        self._workers: dict[str, WorkerInfo] = {}
        self._leases = LeaseTable()
        self._reserved: dict[int, str] = {}  # block -> reservation lease id
        self._committed: dict[int, CommittedBlock] = {}
        self._index: dict[bytes, int] = {}  # hash -> committed block
        self._charged: dict[str, int] = {}  # tenant -> its indexed blocks (no zero entries)
        self._retained = RetainedBlocks()  # the evictable blocks
        self._pinned = 0
        self._expired_leases = 0
        self._lookups = 0
        self._lookup_hit_blocks = 0
        self._evictions = 0
        self._expired_blocks = 0

    @property
    def layout(self) -> ArenaLayout | None:
        """Fixed by the first registration; ``None`` before."""
        return self._layout

    @property
    def tenant_quota_blocks(self) -> int:
        """Retained blocks each tenant may keep; 0 = no quota."""
        return self._quota

    @property
    def workers(self) -> dict[str, WorkerInfo]:
        return dict(self._workers)

    # ------------------------------------------------------------------ workers

    def register_worker(self, info: WorkerInfo) -> Registration:
        """Registers (or re-registers) a worker; the first one fixes the block size and model.

        ``Precondition`` when ``block_bytes`` or the fingerprint differ from the first
        registration's, or when the arena cannot hold one block.
        """
        if not info.worker_id:
            raise InvalidArgument("worker_id is empty")
        if not info.model_fingerprint:
            raise InvalidArgument("model_fingerprint is empty")
        if info.block_bytes <= 0:
            raise InvalidArgument(f"block_bytes must be > 0, got {info.block_bytes}")
        if info.pool_blocks < 0:
            raise InvalidArgument(f"pool_blocks must be >= 0, got {info.pool_blocks}")
        if self._layout is None:
            layout = ArenaLayout.fit(self._arena_bytes, info.block_bytes)
            if layout.num_blocks == 0:
                raise Precondition(
                    f"arena of {self._arena_bytes} bytes holds no block of {info.block_bytes} bytes"
                )
            self._layout, self._fingerprint = layout, info.model_fingerprint
            self._alloc = RunAllocator(layout.num_blocks)
            log.info(
                "arena layout fixed",
                extra={"block_bytes": layout.block_bytes, "num_host_blocks": layout.num_blocks},
            )
        elif info.block_bytes != self._layout.block_bytes:
            raise Precondition(
                f"block_bytes {info.block_bytes} differs from the store's "
                f"{self._layout.block_bytes} (fixed by the first worker)"
            )
        elif info.model_fingerprint != self._fingerprint:
            raise Precondition(
                f"model fingerprint {info.model_fingerprint!r} differs from the store's "
                f"{self._fingerprint!r}"
            )
        if info.worker_id in self._workers:
            log.info("worker re-registered", extra={"worker_id": info.worker_id})
        self._workers[info.worker_id] = info
        return Registration(
            self._arena_name, self._arena_bytes, self._layout.block_bytes, self._layout.num_blocks
        )

    def unregister_worker(self, worker_id: str) -> None:
        """Forgets a worker (its leases run out on their own). ``NotFound`` if unknown."""
        if self._workers.pop(worker_id, None) is None:
            raise NotFound(f"no worker {worker_id!r}")

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
        available = self._alloc.num_free + len(self._retained)
        if num_blocks > available:
            raise Exhausted(
                f"{num_blocks} blocks asked; {self._alloc.num_free} free + "
                f"{len(self._retained)} evictable of {layout.num_blocks}"
            )
        while self._alloc.num_free < num_blocks:
            oldest = self._retained.oldest()
            assert oldest is not None, "evictable blocks were counted"
            self._evict(oldest)
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
        hashes = list(block_hashes) or [b""] * len(blocks)
        if len(hashes) != len(blocks):
            raise InvalidArgument(f"{len(blocks)} blocks but {len(block_hashes)} hashes")
        self._check_unique(blocks)
        for h in hashes:
            if len(h) > MAX_HASH_BYTES:
                raise InvalidArgument(f"block hash of {len(h)} bytes > {MAX_HASH_BYTES}")
        if not (math.isfinite(ttl_s) and ttl_s >= 0):
            raise InvalidArgument(f"ttl_s {ttl_s} must be finite and >= 0")
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
            existing = self._index.get(h) if h else None
            if existing is not None:
                self._alloc.release(BlockRun(b, 1))
                self._reuse(existing, ttl_s, now)
                holders.append(existing)
                continue
            self._committed[b] = CommittedBlock(h, tenant, ttl_s if h else 0.0)
            if h:
                self._index[h] = b
                self._charged[tenant] = self._charged.get(tenant, 0) + 1
                fresh.append(b)
            holders.append(b)
        # Deepest first (see lookup): a chain is evicted from its end, never from its root.
        for b in reversed(fresh):
            self._retained.add(b, tenant, ttl_s, now)
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
            b = self._index.get(h) if h else None
            if b is None:
                break
            found.append(b)
        # Deepest first, so that the root is the most recent: eviction trims a chain from its
        # end and what is left is still a usable prefix.
        for b in reversed(found):
            self._retained.touch(b, now)
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
        expected = block_hashes or [b""] * len(blocks)
        for b, want in zip(blocks, expected, strict=True):
            cb = self._committed.get(b)
            if cb is None or cb.freed:
                raise NotFound(f"block {b} is not committed")
            if want and cb.block_hash != want:
                raise NotFound(f"block {b} no longer holds hash {want.hex()[:32]}")
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
        dropped = sum(self._free_one(b) for b in blocks)
        for h in block_hashes:
            b = self._index.get(h) if h else None
            if b is not None:
                dropped += self._free_one(b)
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
        layout = self._layout
        charged = self._charged.copy()  # one C-level copy: safe against the loop's writes
        return StoreStats(
            num_host_blocks=layout.num_blocks if layout else 0,
            free_blocks=self._alloc.num_free,
            reserved_blocks=len(self._reserved),
            committed_blocks=len(self._committed),
            pinned_blocks=self._pinned,
            evictable_blocks=len(self._retained),
            active_leases=len(self._leases),
            expired_leases=self._expired_leases,
            workers=len(self._workers),
            lookups=self._lookups,
            lookup_hit_blocks=self._lookup_hit_blocks,
            evictions=self._evictions,
            block_bytes=layout.block_bytes if layout else 0,
            arena_name=self._arena_name,
            expired_blocks=self._expired_blocks,
            tenants=tuple(TenantUsage(t, n, self._quota) for t, n in sorted(charged.items())),
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
        n = self._layout.num_blocks if self._layout else 0
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
        evictable: dict[int, tuple[str, float]] = {}
        charged: dict[str, int] = {}
        for b, cb in self._committed.items():
            assert cb.pins == pins.get(b, 0), (
                f"block {b}: {cb.pins} pins, leases say {pins.get(b, 0)}"
            )
            assert not cb.freed or cb.pins, f"freed block {b} kept without a pin"
            assert math.isfinite(cb.ttl_s) and cb.ttl_s >= 0, f"block {b}: ttl {cb.ttl_s}"
            assert cb.block_hash or not cb.ttl_s, f"private block {b} has a ttl"
            indexed = bool(cb.block_hash) and not cb.freed
            assert (self._index.get(cb.block_hash) == b) == indexed, f"index wrong for {b}"
            if indexed:
                charged[cb.tenant] = charged.get(cb.tenant, 0) + 1
            if indexed and not cb.pins:
                evictable[b] = (cb.tenant, cb.ttl_s)
        assert len(self._index) == sum(charged.values()), "index holds uncommitted blocks"
        assert self._charged == charged, f"tenant charges {self._charged} != {charged}"
        self._retained.check_integrity(evictable)
        assert self._pinned == sum(1 for cb in self._committed.values() if cb.pins)

    # ----------------------------------------------------------------- private

    def _require_layout(self) -> ArenaLayout:
        if self._layout is None:
            raise Precondition("no worker registered yet: the block size is unknown")
        return self._layout

    def _lease_duration(self, lease_s: float) -> float:
        if lease_s == 0:
            return self._default_lease_s
        if not math.isfinite(lease_s) or not 0 < lease_s <= self._max_lease_s:
            raise InvalidArgument(f"lease_s {lease_s} not in (0, {self._max_lease_s}]")
        return lease_s

    def _check_unique(self, blocks: Sequence[int]) -> None:
        n = self._layout.num_blocks if self._layout else 0
        for b in blocks:
            if not 0 <= b < n:
                raise InvalidArgument(f"block {b} outside [0, {n})")
        if len(set(blocks)) != len(blocks):
            raise InvalidArgument("duplicate block ids")

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
            for run in _runs(lease.blocks):
                self._alloc.release(run)
            return
        now = self._clock() if now is None else now
        for b in lease.blocks:
            cb = self._committed[b]
            cb.pins -= 1
            if cb.pins:
                continue
            self._pinned -= 1
            if cb.freed:
                self._drop(b, cb)
            elif cb.block_hash:
                self._retained.add(b, cb.tenant, cb.ttl_s, now)  # the pin was its last use

    def _pin(self, blocks: set[int], duration: float, owner: str) -> PinLease:
        """Pins checked committed blocks: they stop being retained (no eviction, no ageing)."""
        for b in blocks:
            cb = self._committed[b]
            if cb.pins == 0:
                self._pinned += 1
                self._retained.remove(b)
            cb.pins += 1
        lease = self._leases.open(LeaseKind.PIN, owner, self._clock() + duration, blocks)
        return PinLease(lease.lease_id, duration)

    def _reuse(self, b: int, ttl_s: float, now: float) -> None:
        """A duplicate commit of committed block ``b``: a use, and the longer ttl wins."""
        cb = self._committed[b]
        longer = 0.0 if not (cb.ttl_s and ttl_s) else max(cb.ttl_s, ttl_s)
        if longer == cb.ttl_s:
            self._retained.touch(b, now)
            return
        cb.ttl_s = longer
        if b in self._retained:
            self._retained.remove(b)
            self._retained.add(b, cb.tenant, longer, now)

    def _enforce_quota(self, tenant: str, keep: set[int]) -> None:
        """Evicts the tenant's least recently used retained blocks, never those in ``keep``,
        until it is within its quota or nothing more can go (soft quota: logged)."""
        while self._charged.get(tenant, 0) > self._quota:
            oldest = self._retained.oldest_of(tenant)
            # ``keep`` was used last: once the oldest is kept, every retained one is.
            if oldest is None or oldest in keep:
                log.info(
                    "tenant over its retention quota; the rest is pinned or just committed",
                    extra={
                        "tenant": tenant,
                        "retained_blocks": self._charged[tenant],
                        "quota_blocks": self._quota,
                    },
                )
                return
            self._evict(oldest)

    def _expire_retained(self, now: float) -> None:
        """Drops the retained blocks whose ttl has run out by ``now``."""
        due = self._retained.due(now)
        for b in due:
            self._drop(b, self._committed[b])
        if due:
            self._expired_blocks += len(due)
            log.debug("retained blocks expired", extra={"blocks": len(due)})

    def _free_one(self, b: int) -> int:
        """Frees one block (1), or skips it (0) when it is not committed or already freed."""
        cb = self._committed.get(b)
        if cb is None or cb.freed:
            return 0
        if cb.pins:
            cb.freed = True
            self._unindex(b, cb)
        else:
            self._drop(b, cb)
        return 1

    def _evict(self, b: int) -> None:
        self._evictions += 1
        self._drop(b, self._committed[b])

    def _unindex(self, b: int, cb: CommittedBlock) -> None:
        if cb.block_hash:
            del self._index[cb.block_hash]
            left = self._charged[cb.tenant] - 1
            if left:
                self._charged[cb.tenant] = left
            else:
                del self._charged[cb.tenant]
            self._retained.remove(b)

    def _drop(self, b: int, cb: CommittedBlock) -> None:
        """An unpinned committed block goes back to the free space."""
        if not cb.freed:
            self._unindex(b, cb)
        del self._committed[b]
        self._alloc.release(BlockRun(b, 1))


def _runs(blocks: Iterable[int]) -> list[BlockRun]:
    """Blocks as maximal sorted runs: ``{4, 1, 2, 3, 7} -> [BlockRun(1, 4), BlockRun(7, 1)]``."""
    runs: list[BlockRun] = []
    for b in sorted(blocks):
        if runs and runs[-1].stop == b:
            runs[-1] = BlockRun(runs[-1].start, runs[-1].count + 1)
        else:
            runs.append(BlockRun(b, 1))
    return runs
