"""gRPC adapter of the KV store: convert the message, call :class:`Store`, convert back.

Store errors become status codes here and only here (:func:`status_code`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from kvstore_svc.errors import Exhausted, InvalidArgument, NotFound, Precondition, StoreError
from kvstore_svc.store import PoolKind, Store, WorkerInfo
from proto import kvstore_pb2 as pb
from proto import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = "fastswitch.kvstore.v1.KVStore"

R = TypeVar("R")


def status_code(err: StoreError) -> grpc.StatusCode:
    match err:
        case InvalidArgument():
            return grpc.StatusCode.INVALID_ARGUMENT
        case NotFound():
            return grpc.StatusCode.NOT_FOUND
        case Exhausted():
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        case Precondition():
            return grpc.StatusCode.FAILED_PRECONDITION
        case _:
            return grpc.StatusCode.INTERNAL


class KVStoreServicer(pb_grpc.KVStoreServicer):
    """Serves ``fastswitch.kvstore.v1.KVStore`` from one :class:`Store` on the event loop."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def RegisterWorker(
        self, request: pb.RegisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RegisterWorkerResponse:
        def call() -> pb.RegisterWorkerResponse:
            reg = self._store.register_worker(_worker_info(request))
            return pb.RegisterWorkerResponse(
                arena_name=reg.arena_name,
                arena_bytes=reg.arena_bytes,
                block_bytes=reg.block_bytes,
                num_host_blocks=reg.num_host_blocks,
                instance=reg.instance,
            )

        return await _answer(context, call)

    async def UnregisterWorker(
        self, request: pb.UnregisterWorkerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UnregisterWorkerResponse:
        def call() -> pb.UnregisterWorkerResponse:
            self._store.unregister_worker(request.worker_id)
            return pb.UnregisterWorkerResponse()

        return await _answer(context, call)

    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReserveResponse:
        def call() -> pb.ReserveResponse:
            res = self._store.reserve(
                request.num_blocks, lease_s=request.lease_s, owner=request.owner
            )
            return pb.ReserveResponse(
                lease_id=res.lease_id,
                extents=[pb.Extent(start=r.start, count=r.count) for r in res.extents],
                expires_in_s=res.expires_in_s,
            )

        return await _answer(context, call)

    async def Commit(
        self, request: pb.CommitRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CommitResponse:
        def call() -> pb.CommitResponse:
            result = self._store.commit(
                request.lease_id,
                list(request.blocks),
                list(request.block_hashes),
                tenant=request.tenant,
                ttl_s=request.ttl_s,
            )
            return pb.CommitResponse(committed=result.committed, blocks=result.blocks)

        return await _answer(context, call)

    async def Lookup(
        self, request: pb.LookupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.LookupResponse:
        def call() -> pb.LookupResponse:
            hashes = list(request.block_hashes)
            if not request.pin:
                return pb.LookupResponse(blocks=self._store.lookup(hashes))
            found = self._store.lookup_and_pin(hashes, lease_s=request.lease_s, owner=request.owner)
            if found.pin is None:
                return pb.LookupResponse()
            return pb.LookupResponse(
                blocks=found.blocks,
                lease_id=found.pin.lease_id,
                expires_in_s=found.pin.expires_in_s,
            )

        return await _answer(context, call)

    async def Pin(
        self, request: pb.PinRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PinResponse:
        def call() -> pb.PinResponse:
            pin = self._store.pin(
                list(request.blocks),
                lease_s=request.lease_s,
                owner=request.owner,
                block_hashes=list(request.block_hashes),
            )
            return pb.PinResponse(lease_id=pin.lease_id, expires_in_s=pin.expires_in_s)

        return await _answer(context, call)

    async def Release(
        self, request: pb.ReleaseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReleaseResponse:
        def call() -> pb.ReleaseResponse:
            return pb.ReleaseResponse(released_blocks=self._store.release(request.lease_id))

        return await _answer(context, call)

    async def Free(
        self, request: pb.FreeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FreeResponse:
        def call() -> pb.FreeResponse:
            freed = self._store.free(list(request.blocks), block_hashes=list(request.block_hashes))
            return pb.FreeResponse(freed=freed)

        return await _answer(context, call)

    async def GetStats(
        self, request: pb.StoreStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StoreStats:
        s = self._store.stats()
        return pb.StoreStats(
            num_host_blocks=s.num_host_blocks,
            free_blocks=s.free_blocks,
            reserved_blocks=s.reserved_blocks,
            committed_blocks=s.committed_blocks,
            pinned_blocks=s.pinned_blocks,
            active_leases=s.active_leases,
            expired_leases=s.expired_leases,
            workers=s.workers,
            lookups=s.lookups,
            lookup_hit_blocks=s.lookup_hit_blocks,
            evictions=s.evictions,
            block_bytes=s.block_bytes,
            arena_name=s.arena_name,
            evictable_blocks=s.evictable_blocks,
            expired_blocks=s.expired_blocks,
            tenants=[
                pb.TenantUsage(
                    tenant=t.tenant, retained_blocks=t.retained_blocks, quota_blocks=t.quota_blocks
                )
                for t in s.tenants
            ],
        )


def _worker_info(request: pb.RegisterWorkerRequest) -> WorkerInfo:
    try:
        pool_kind = PoolKind(request.pool_kind)
    except ValueError:
        kinds = ", ".join(repr(k.value) for k in PoolKind)
        raise InvalidArgument(f"pool_kind {request.pool_kind!r} is not one of {kinds}") from None
    return WorkerInfo(
        worker_id=request.worker_id,
        model_fingerprint=request.model_fingerprint,
        block_bytes=request.block_bytes,
        device=request.device,
        pool_kind=pool_kind,
        pool_handle=request.pool_handle,
        pool_blocks=request.pool_blocks,
    )


async def _answer(context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], R]) -> R:
    """Runs ``call``; a :class:`StoreError` aborts the RPC with its status code and message."""
    try:
        return call()
    except StoreError as err:
        code = status_code(err)
        log.debug("request refused", extra={"code": code.name, "error": str(err)})
        await context.abort(code, str(err))
        raise  # abort() always raises; this keeps the type checker honest
