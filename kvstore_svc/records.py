"""The store's plain records: block states, worker descriptions and what its calls return.

No behaviour here; :mod:`kvstore_svc.store` re-exports every name, so ``from kvstore_svc.store
import X`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from servekit.runs import BlockRun


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
    instance: str  # this store lifetime's id: every lease id begins with it and a colon


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
    arena_bytes: int = 0  # the arena file's size
