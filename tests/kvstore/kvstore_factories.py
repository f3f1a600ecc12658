"""Factories for the KV store tests (imported by name: ``from kvstore_factories import ...``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore_svc.store import PoolKind, Store, WorkerInfo
from servekit.runs import BlockRun

BLOCK_BYTES = 4096
FINGERPRINT = "tiny-model@test"

StoreFactory = Callable[..., Store]  # the ``new_store`` fixture: make_store on the test's clock


@dataclass(slots=True)
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def worker_info(
    worker_id: str = "w0", *, block_bytes: int = BLOCK_BYTES, fingerprint: str = FINGERPRINT
) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        model_fingerprint=fingerprint,
        block_bytes=block_bytes,
        device="cpu",
        pool_kind=PoolKind.SHM,
        pool_handle=b"fastswitch-test-pool",
        pool_blocks=64,
    )


def make_store(
    num_blocks: int = 16,
    *,
    clock: FakeClock | None = None,
    lease_s: float = 30.0,
    tenant_quota_blocks: int = 0,
) -> Store:
    """A store with one registered worker and exactly ``num_blocks`` host blocks."""
    store = Store(
        "fastswitch-test-arena",
        num_blocks * BLOCK_BYTES + 100,  # a tail smaller than a block stays unused
        default_lease_s=lease_s,
        tenant_quota_blocks=tenant_quota_blocks,
        clock=clock if clock is not None else FakeClock(),
    )
    store.register_worker(worker_info())
    return store


def h(*parts: object) -> bytes:
    """A readable block hash for tests."""
    return "/".join(map(str, parts)).encode()


def blocks_of(extents: Sequence[BlockRun]) -> list[int]:
    return [b for run in extents for b in run.blocks()]


def commit_chain(
    store: Store, prefix: str, n: int, *, tenant: str = "", ttl_s: float = 0.0
) -> list[int]:
    """Reserves and commits ``n`` hashed blocks ``prefix/0 .. prefix/n-1``; returns their ids."""
    res = store.reserve(n)
    blocks = blocks_of(res.extents)
    store.commit(res.lease_id, blocks, [h(prefix, i) for i in range(n)], tenant=tenant, ttl_s=ttl_s)
    return blocks
