"""The worker's side of the node's KV store: register this worker and its device pool, map the
store's host arena, and start the swap engine over it; undone in reverse at shutdown.

A store that restarts creates a new arena file under the same name, and knows nothing of this
worker. ``StoreConnection`` registers again and maps the new arena: at once when the store's
health turns SERVING again (``servekit/health_watch.py``), and in any case before a step that
swaps finds the arena file replaced (``fresh``: the mapped file's identity against the path's).
The new swap engine is installed by the link on the step thread, between steps
(``StepExecutor.replace_swaps``). A step whose swaps cannot be served (the store is down, or
its arena could not be mapped) gets them refused (``link.py``): the scheduler recomputes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack, suppress

import grpc
import torch

from kvstore_svc.arena import ArenaLayout
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from servekit import shm
from servekit.health_watch import PEER_CHANNEL_OPTIONS, watch_serving
from servekit.names import SwapLayout
from servekit.planes import OPEN_PLANE, InternalPlane
from worker_svc.device_pool import DevicePool
from worker_svc.kv_pool import KVPool
from worker_svc.swap_engine import SwapEngine

log = logging.getLogger(__name__)


def lease_instance(lease_id: str) -> str:
    """The store lifetime that granted `lease_id` (its ids are ``<instance>:<rest>``)."""
    return lease_id.partition(":")[0]


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
        self.identity = _file_identity(self._buf.path)
        self.instance = resp.instance  # the store lifetime whose leases copy into this arena
        layout = ArenaLayout(resp.block_bytes, resp.num_host_blocks)
        self.blocks: torch.Tensor | None = layout.blocks_view(self._buf)

    def fresh(self) -> bool:
        """True while the arena's name still names the file this maps (not removed, not
        replaced by a restarted store's)."""
        return _file_identity(self._buf.path) == self.identity

    def close(self) -> None:
        self.blocks = None
        try:
            self._buf.close()
        except BufferError:
            log.warning("arena views still alive; unmapped at exit")


class StoreConnection:
    """This worker's registration with the KV store, its arena mapping and the swap engine over
    it, kept valid across store restarts (see the module docstring).

    Owned by ``server.serve`` (``connect_store``); ``watch`` is its one task. ``swaps`` is the
    engine the executor uses; a replacement waits in ``take_replacement`` until the link installs
    it between steps, and the link then hands the old one back to ``retire``. ``close`` undoes
    everything: engines closed, arenas unmapped, unregistered, channel closed.
    """

    def __init__(
        self,
        address: str,
        *,
        worker_id: str,
        fingerprint: str,
        pool: DevicePool,
        swap_layout: SwapLayout,
        swap_sync: bool,
        plane: InternalPlane = OPEN_PLANE,
    ) -> None:
        self._address = address
        self._worker_id = worker_id
        self._fingerprint = fingerprint
        self._pool = pool
        self._layout = swap_layout
        self._sync = swap_sync
        self._channel = plane.channel(address, options=PEER_CHANNEL_OPTIONS)
        self.stub = kv_grpc.KVStoreStub(self._channel)
        self._arena: MappedArena | None = None
        self.swaps: SwapEngine | None = None
        self._next: tuple[MappedArena, SwapEngine] | None = None
        self._retired_arena: MappedArena | None = None
        self._lock = asyncio.Lock()
        self.registrations = 0

    async def connect(self) -> SwapEngine:
        """The first registration (errors propagate: the worker does not start without it; a
        store that refuses the deployment secret is a ValueError with one line)."""
        try:
            resp = await _register(self.stub, self._worker_id, self._fingerprint, self._pool, 30.0)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            raise ValueError(
                f"the KV store at {self._address} refused this worker: UNAUTHENTICATED "
                "(check the deployment secret)"
            ) from None
        self._arena = MappedArena(resp, self._pool.pool.block_bytes)
        self.swaps = _open_swaps(self._pool.pool, self._arena, self._layout, self._sync)
        self.registrations = 1
        return self.swaps

    @property
    def instance(self) -> str | None:
        """The store lifetime of the arena the next step's swaps use (see ``lease_instance``)."""
        return None if self._arena is None else self._arena.instance

    def fresh(self) -> bool:
        """True when the engine's arena (or the one waiting to be installed) is the store's."""
        arena = self._next[0] if self._next is not None else self._arena
        return arena is not None and arena.fresh()

    async def ensure_fresh(self, timeout_s: float = 2.0) -> bool:
        """Registers again when the arena file was replaced or removed; True when swaps may run
        (with the engine ``take_replacement`` may hand over first)."""
        if self.fresh():
            return True
        await self.register_again(timeout_s)
        return self.fresh()

    async def register_again(self, timeout_s: float = 5.0) -> None:
        """Registers with the (restarted) store; maps its arena when it is a new file and keeps
        a new engine for the link to install. Failures are logged (the next try comes with the
        next swap or the next SERVING)."""
        async with self._lock:
            if self.fresh():
                try:  # same store lifetime, e.g. a health blip: the registration is refreshed
                    await _register(
                        self.stub, self._worker_id, self._fingerprint, self._pool, timeout_s
                    )
                except grpc.aio.AioRpcError as err:
                    log.warning("re-registration failed", extra={"why": err.code().name})
                return
            try:
                resp = await _register(
                    self.stub, self._worker_id, self._fingerprint, self._pool, timeout_s
                )
                arena = MappedArena(resp, self._pool.pool.block_bytes)
            except (grpc.aio.AioRpcError, OSError, ValueError) as err:
                why = err.code().name if isinstance(err, grpc.aio.AioRpcError) else str(err)
                log.warning("cannot register with the restarted KV store", extra={"why": why})
                return
            engine = _open_swaps(self._pool.pool, arena, self._layout, self._sync)
            if self._next is not None:  # an earlier replacement never installed
                old_arena, old_engine = self._next
                old_engine.close()
                old_arena.close()
            self._next = (arena, engine)
            self.registrations += 1
            log.info("registered again with a restarted KV store; new arena mapped")

    def take_replacement(self) -> SwapEngine | None:
        """The engine to install before the next step, if a re-registration made one."""
        if self._next is None:
            return None
        old_arena = self._arena
        self._arena, self.swaps = self._next
        self._next = None
        self._retired_arena = old_arena
        return self.swaps

    def retire(self, old: SwapEngine | None) -> None:
        """The link installed the replacement: the old engine is closed (its jobs were waited
        for), and its arena unmapped."""
        if old is not None:
            old.close()
        if self._retired_arena is not None:
            self._retired_arena.close()
            self._retired_arena = None

    async def watch(self) -> None:
        """Until cancelled: registers again each time the store turns SERVING after it was lost."""
        seen_down = False

        async def up() -> None:
            if seen_down:
                await self.register_again()

        async def down() -> None:
            nonlocal seen_down
            seen_down = True
            log.warning("KV store lost; swaps refused until it is back")

        await watch_serving(self._channel, on_up=up, on_down=down)

    async def close(self) -> None:
        """Closes the engines (join threads, unpin), unmaps, unregisters, closes the channel."""
        if self._next is not None:
            self._next[1].close()
            self._next[0].close()
            self._next = None
        if self.swaps is not None:
            self.swaps.close()
        self.retire(None)
        if self._arena is not None:
            self._arena.close()
        await _unregister(self.stub, self._worker_id)
        await self._channel.close()


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
) -> StoreConnection:
    """Registers with the KV store at ``address``, maps its arena, starts the swap engine and
    the watch over the store; ``cleanup`` undoes it in reverse (``StoreConnection.close``).
    ``plane`` sends the deployment secret (and TLS)."""
    conn = StoreConnection(
        address,
        worker_id=worker_id,
        fingerprint=fingerprint,
        pool=pool,
        swap_layout=swap_layout,
        swap_sync=swap_sync,
        plane=plane,
    )
    cleanup.push_async_callback(conn.close)
    await conn.connect()
    watch = asyncio.create_task(conn.watch(), name="kvstore-watch")

    async def stop_watch() -> None:
        watch.cancel()
        with suppress(asyncio.CancelledError):
            await watch

    cleanup.push_async_callback(stop_watch)
    return conn


def _file_identity(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


async def _register(
    store: kv_grpc.KVStoreStub,
    worker_id: str,
    fingerprint: str,
    pool: DevicePool,
    timeout_s: float,
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
        timeout=timeout_s,
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
