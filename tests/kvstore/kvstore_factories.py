"""Factories for the KV store tests (imported by name: ``from kvstore_factories import ...``)."""

from __future__ import annotations

from dataclasses import dataclass

from kvstore_svc.store import PoolKind, Store, WorkerInfo

BLOCK_BYTES = 4096
FINGERPRINT = "tiny-model@test"


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
    num_blocks: int = 16, *, clock: FakeClock | None = None, lease_s: float = 30.0
) -> Store:
    """A store with one registered worker and exactly ``num_blocks`` host blocks."""
    store = Store(
        "fastswitch-test-arena",
        num_blocks * BLOCK_BYTES + 100,  # a tail smaller than a block stays unused
        default_lease_s=lease_s,
        clock=clock if clock is not None else FakeClock(),
    )
    store.register_worker(worker_info())
    return store


def h(*parts: object) -> bytes:
    """A readable block hash for tests."""
    return "/".join(map(str, parts)).encode()
