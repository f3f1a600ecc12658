"""The worker's side of the node's KV store: register this worker and its device pool, map the
store's host arena, and start the swap engine over it; undone in reverse at shutdown."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import grpc
import torch

from kvstore_svc.arena import ArenaLayout
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from servekit import shm
from servekit.names import SwapLayout
from servekit.planes import OPEN_PLANE, InternalPlane
from worker_svc.device_pool import DevicePool
from worker_svc.kv_pool import KVPool
from worker_svc.swap_engine import SwapEngine

log = logging.getLogger(__name__)


class MappedArena:
    """This worker's mapping of the node's host arena: ``blocks`` is uint8
    ``[num_host_blocks, block_bytes]``. ``close`` drops the view and unmaps (the file is the
    store's: it stays)."""

    def __init__(self, resp: kv.RegisterWorkerResponse, block_bytes: int) -> None:
        if resp.block_bytes != block_bytes:
            raise ValueError(
                f"the KV store's arena has {resp.block_bytes}-byte blocks, this worker's pool "
                f"{block_bytes}"
            )
        self._buf = shm.open_existing(resp.arena_name)
        layout = ArenaLayout(resp.block_bytes, resp.num_host_blocks)
        self.blocks: torch.Tensor | None = layout.blocks_view(self._buf)

    def close(self) -> None:
        self.blocks = None
        try:
            self._buf.close()
        except BufferError:
            log.warning("arena views still alive; unmapped at exit")


async def connect_store(
    address: str,
    *,
    worker_id: str,
    fingerprint: str,
    pool: DevicePool,
    swap_layout: SwapLayout,
    swap_sync: bool,
    cleanup: AsyncExitStack,
    plane: InternalPlane = OPEN_PLANE,
) -> tuple[kv_grpc.KVStoreStub, SwapEngine]:
    """Registers with the KV store at ``address``, maps its arena and starts the swap engine;
    ``cleanup`` undoes it in reverse: close the engine (join its thread, unpin), unmap,
    unregister, close the channel. ``plane`` sends the deployment secret (and TLS)."""
    channel = plane.channel(address)
    cleanup.push_async_callback(channel.close)
    store = kv_grpc.KVStoreStub(channel)
    try:
        resp = await _register(store, worker_id, fingerprint, pool)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        raise ValueError(
            f"the KV store at {address} refused this worker: UNAUTHENTICATED "
            "(check the deployment secret)"
        ) from None
    cleanup.push_async_callback(_unregister, store, worker_id)
    arena = MappedArena(resp, pool.pool.block_bytes)
    cleanup.callback(arena.close)
    swaps = _open_swaps(pool.pool, arena, swap_layout, swap_sync)
    cleanup.callback(swaps.close)
    return store, swaps


async def _register(
    store: kv_grpc.KVStoreStub, worker_id: str, fingerprint: str, pool: DevicePool
) -> kv.RegisterWorkerResponse:
    """Registers the worker and its pool with the node's KV store (swaps need the arena)."""
    resp = await store.RegisterWorker(
        kv.RegisterWorkerRequest(
            worker_id=worker_id,
            model_fingerprint=fingerprint,
            block_bytes=pool.pool.block_bytes,
            device=str(pool.pool.device),
            pool_kind=pool.kind,
            pool_handle=pool.handle,
            pool_blocks=pool.pool.num_blocks,
        ),
        timeout=30,
    )
    log.info(
        "registered with the KV store",
        extra={"arena": resp.arena_name, "host_blocks": resp.num_host_blocks},
    )
    return resp


async def _unregister(store: kv_grpc.KVStoreStub, worker_id: str) -> None:
    try:
        await store.UnregisterWorker(kv.UnregisterWorkerRequest(worker_id=worker_id), timeout=5)
    except grpc.aio.AioRpcError as err:
        log.warning("could not unregister", extra={"why": err.code().name})


def _open_swaps(pool: KVPool, arena: MappedArena, layout: SwapLayout, sync: bool) -> SwapEngine:
    assert arena.blocks is not None
    swaps = SwapEngine(pool, arena.blocks, layout=layout, sync=sync)
    log.info(
        "swap engine ready",
        extra={"layout": str(layout), "sync": sync, "host_blocks": swaps.num_host_blocks},
    )
    return swaps
