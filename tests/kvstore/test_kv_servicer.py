"""The gRPC adapter against an in-process server on 127.0.0.1:0: flows and status codes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kvstore_factories import BLOCK_BYTES, FINGERPRINT, FakeClock

from kvstore_svc.metrics import StoreCollector
from kvstore_svc.servicer import SERVICE_NAME, KVStoreServicer
from kvstore_svc.store import Store
from proto import kvstore_pb2 as pb
from proto import kvstore_pb2_grpc as pb_grpc
from servekit.service import GrpcService

NUM_BLOCKS = 16


@dataclass(slots=True)
class Running:
    stub: pb_grpc.KVStoreStub
    channel: grpc.aio.Channel
    service: GrpcService
    store: Store
    clock: FakeClock


@contextlib.asynccontextmanager
async def serving(tenant_quota_blocks: int = 0) -> AsyncIterator[Running]:
    """A store on a fake clock behind an in-process server on 127.0.0.1:0, and a channel."""
    clock = FakeClock()
    store = Store(
        "fastswitch-test-arena",
        NUM_BLOCKS * BLOCK_BYTES,
        tenant_quota_blocks=tenant_quota_blocks,
        clock=clock,
    )
    service = GrpcService("kvstore-test", listen="127.0.0.1:0", metrics_port=None)
    service.registry.register(StoreCollector(store))
    service.add(pb_grpc.add_KVStoreServicer_to_server, KVStoreServicer(store), SERVICE_NAME)
    await service.start()
    service.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}") as channel:
            yield Running(pb_grpc.KVStoreStub(channel), channel, service, store, clock)
    finally:
        await service.stop(grace_s=0)
        store.check_integrity()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with serving() as running:
        yield running


def register_request(
    worker_id: str = "w0", block_bytes: int = BLOCK_BYTES
) -> pb.RegisterWorkerRequest:
    return pb.RegisterWorkerRequest(
        worker_id=worker_id,
        model_fingerprint=FINGERPRINT,
        block_bytes=block_bytes,
        device="cpu",
        pool_kind="shm",
        pool_handle=b"fastswitch-test-pool",
        pool_blocks=32,
    )


async def expect_code(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    details = info.value.details()
    assert details
    return details


async def test_register_reserve_commit_lookup_pin_release_free(running: Running) -> None:
    stub = running.stub
    reg = await stub.RegisterWorker(register_request(), timeout=5)
    assert (reg.arena_name, reg.block_bytes, reg.num_host_blocks) == (
        "fastswitch-test-arena",
        BLOCK_BYTES,
        NUM_BLOCKS,
    )
    assert reg.arena_bytes == NUM_BLOCKS * BLOCK_BYTES
    res = await stub.Reserve(pb.ReserveRequest(num_blocks=3, owner="w0"), timeout=5)
    assert [(e.start, e.count) for e in res.extents] == [(0, 3)]
    assert res.expires_in_s == 30.0
    hashes = [b"a", b"b", b"c"]
    assert not (await stub.Lookup(pb.LookupRequest(block_hashes=hashes), timeout=5)).blocks
    commit = await stub.Commit(
        pb.CommitRequest(lease_id=res.lease_id, blocks=[0, 1, 2], block_hashes=hashes, tenant="t"),
        timeout=5,
    )
    assert commit.committed == 3
    found = await stub.Lookup(pb.LookupRequest(block_hashes=[*hashes, b"d"]), timeout=5)
    assert list(found.blocks) == [0, 1, 2]
    pin = await stub.Pin(pb.PinRequest(blocks=[0, 1], lease_s=2.5, owner="w1"), timeout=5)
    assert pin.expires_in_s == 2.5
    stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
    assert (stats.committed_blocks, stats.pinned_blocks, stats.active_leases) == (3, 2, 1)
    assert (stats.lookups, stats.lookup_hit_blocks, stats.workers) == (2, 3, 1)
    assert stats.arena_name == "fastswitch-test-arena" and stats.block_bytes == BLOCK_BYTES
    released = await stub.Release(pb.ReleaseRequest(lease_id=pin.lease_id), timeout=5)
    assert released.released_blocks == 2
    freed = await stub.Free(pb.FreeRequest(blocks=[0, 1, 2]), timeout=5)
    assert freed.freed == 3
    assert (await stub.GetStats(pb.StoreStatsRequest(), timeout=5)).free_blocks == NUM_BLOCKS
    registry = running.service.registry
    assert registry.get_sample_value("fastswitch_kvstore_lookups_total") == 2
    assert registry.get_sample_value("fastswitch_kvstore_host_blocks", {"state": "free"}) == 16
    await stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="w0"), timeout=5)


async def test_error_codes_and_still_serving(running: Running) -> None:
    stub = running.stub
    detail = await expect_code(
        stub.Reserve(pb.ReserveRequest(num_blocks=1), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no worker" in detail
    await stub.RegisterWorker(register_request(), timeout=5)
    await expect_code(
        stub.RegisterWorker(register_request("w1", block_bytes=2 * BLOCK_BYTES), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    bad_kind = register_request("w2")
    bad_kind.pool_kind = "nfs"
    await expect_code(stub.RegisterWorker(bad_kind, timeout=5), grpc.StatusCode.INVALID_ARGUMENT)
    for n in (0, -4):
        await expect_code(
            stub.Reserve(pb.ReserveRequest(num_blocks=n), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await expect_code(
        stub.Reserve(pb.ReserveRequest(num_blocks=1, lease_s=-1), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_code(
        stub.Reserve(pb.ReserveRequest(num_blocks=NUM_BLOCKS + 1), timeout=5),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    await expect_code(
        stub.Release(pb.ReleaseRequest(lease_id="r-nope"), timeout=5), grpc.StatusCode.NOT_FOUND
    )
    await expect_code(
        stub.Commit(pb.CommitRequest(lease_id="r-nope", blocks=[0]), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_code(stub.Pin(pb.PinRequest(blocks=[3]), timeout=5), grpc.StatusCode.NOT_FOUND)
    await expect_code(
        stub.Pin(pb.PinRequest(blocks=[NUM_BLOCKS]), timeout=5), grpc.StatusCode.INVALID_ARGUMENT
    )
    res = await stub.Reserve(pb.ReserveRequest(num_blocks=2), timeout=5)
    await expect_code(
        stub.Commit(pb.CommitRequest(lease_id=res.lease_id, blocks=[0, 1], block_hashes=[b"x"])),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_code(
        stub.UnregisterWorker(pb.UnregisterWorkerRequest(worker_id="ghost"), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )

    # Still serving, and nothing leaked from the refused calls.
    health = health_pb2_grpc.HealthStub(running.channel)
    check = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
    assert (stats.reserved_blocks, stats.active_leases) == (2, 1)
    assert (
        await stub.Release(pb.ReleaseRequest(lease_id=res.lease_id), timeout=5)
    ).released_blocks == 2


async def test_expired_lease_is_not_found(running: Running) -> None:
    stub = running.stub
    await stub.RegisterWorker(register_request(), timeout=5)
    res = await stub.Reserve(pb.ReserveRequest(num_blocks=2, lease_s=1), timeout=5)
    running.clock.advance(1.0)
    detail = await expect_code(
        stub.Commit(pb.CommitRequest(lease_id=res.lease_id, blocks=[0, 1]), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "expired" in detail
    stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
    assert (stats.free_blocks, stats.expired_leases) == (NUM_BLOCKS, 1)


async def commit_new(
    stub: pb_grpc.KVStoreStub, hashes: list[bytes], *, tenant: str = "t", ttl_s: float = 0
) -> pb.CommitResponse:
    res = await stub.Reserve(pb.ReserveRequest(num_blocks=len(hashes)), timeout=5)
    blocks = [b for e in res.extents for b in range(e.start, e.start + e.count)]
    return await stub.Commit(
        pb.CommitRequest(
            lease_id=res.lease_id, blocks=blocks, block_hashes=hashes, tenant=tenant, ttl_s=ttl_s
        ),
        timeout=5,
    )


async def test_retained_kv_fields(running: Running) -> None:
    stub = running.stub
    await stub.RegisterWorker(register_request(), timeout=5)
    first = await commit_new(stub, [b"a", b"b"], ttl_s=10)
    assert (first.committed, list(first.blocks)) == (2, [0, 1])
    dup = await commit_new(stub, [b"a", b"c"])
    assert (dup.committed, list(dup.blocks)) == (1, [0, 3])  # block 2 was a's duplicate

    found = await stub.Lookup(
        pb.LookupRequest(block_hashes=[b"a", b"b", b"x"], pin=True, lease_s=4, owner="w1"),
        timeout=5,
    )
    assert list(found.blocks) == [0, 1] and found.lease_id and found.expires_in_s == 4
    none = await stub.Lookup(pb.LookupRequest(block_hashes=[b"x"], pin=True), timeout=5)
    assert (list(none.blocks), none.lease_id, none.expires_in_s) == ([], "", 0)
    plain = await stub.Lookup(pb.LookupRequest(block_hashes=[b"a"]), timeout=5)
    assert list(plain.blocks) == [0] and not plain.lease_id
    await expect_code(
        stub.Lookup(pb.LookupRequest(block_hashes=[b"a"], pin=True, lease_s=-1), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    detail = await expect_code(
        stub.Pin(pb.PinRequest(blocks=[3, 0], block_hashes=[b"c", b"b"]), timeout=5),
        grpc.StatusCode.NOT_FOUND,
    )
    assert "block 0" in detail
    pin = await stub.Pin(pb.PinRequest(blocks=[3, 0], block_hashes=[b"c", b""]), timeout=5)
    stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
    assert (stats.pinned_blocks, stats.evictable_blocks, stats.active_leases) == (3, 0, 2)
    assert [(u.tenant, u.retained_blocks, u.quota_blocks) for u in stats.tenants] == [("t", 3, 0)]

    await stub.Release(pb.ReleaseRequest(lease_id=found.lease_id), timeout=5)
    await stub.Release(pb.ReleaseRequest(lease_id=pin.lease_id), timeout=5)
    running.clock.advance(10)
    running.store.expire()  # what the periodic task does: b (ttl 10) expires; a and c have none
    freed = await stub.Free(pb.FreeRequest(block_hashes=[b"a", b"b", b"zz"]), timeout=5)
    assert freed.freed == 1
    stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
    assert (stats.expired_blocks, stats.committed_blocks, stats.evictable_blocks) == (1, 1, 1)
    registry = running.service.registry
    assert registry.get_sample_value("fastswitch_kvstore_expired_blocks_total") == 1
    assert registry.get_sample_value("fastswitch_kvstore_tenant_retained_blocks", {"tenant": "t"})
    assert registry.get_sample_value("fastswitch_kvstore_tenant_quota_blocks") == 0


async def test_tenant_quota_over_grpc() -> None:
    async with serving(tenant_quota_blocks=2) as running:
        stub = running.stub
        await stub.RegisterWorker(register_request(), timeout=5)
        await commit_new(stub, [b"a0", b"a1"], tenant="A")
        await commit_new(stub, [b"b0"], tenant="B")
        await commit_new(stub, [b"a2"], tenant="A")
        stats = await stub.GetStats(pb.StoreStatsRequest(), timeout=5)
        assert [(u.tenant, u.retained_blocks, u.quota_blocks) for u in stats.tenants] == [
            ("A", 2, 2),
            ("B", 1, 2),
        ]
        assert stats.evictions == 1
        # A's least recently used block went: a1, the end of the chain a0 -> a1 (deepest first).
        found = await stub.Lookup(pb.LookupRequest(block_hashes=[b"a0", b"a1"]), timeout=5)
        assert len(found.blocks) == 1
        registry = running.service.registry
        assert registry.get_sample_value("fastswitch_kvstore_tenant_quota_blocks") == 2
        retained = registry.get_sample_value(
            "fastswitch_kvstore_tenant_retained_blocks", {"tenant": "B"}
        )
        assert retained == 1
