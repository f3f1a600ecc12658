"""Process entry and life cycle of the KV store (``python -m kvstore_svc``).

create the arena (pre-faulted; a crashed run's stale file is removed first)
  -> gRPC service up (health NOT_SERVING) -> lease-expiry task -> SERVING
  -> wait for SIGTERM / SIGINT
  -> _shutdown: NOT_SERVING, stop accepting (in-flight calls get a grace period),
     cancel the expiry task, unmap and unlink the arena -> exit 0
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from kvstore_svc import config
from kvstore_svc.arena import HostArena
from kvstore_svc.config import KVStoreConfig
from kvstore_svc.metrics import StoreCollector
from kvstore_svc.servicer import SERVICE_NAME, KVStoreServicer
from kvstore_svc.store import Store
from proto import kvstore_pb2_grpc as pb_grpc
from servekit import service as servekit_service
from servekit.logs import setup_logging
from servekit.service import GrpcService

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the KV store until SIGTERM/SIGINT. 0 on a clean stop, 1 on failure, 2 on bad config."""
    try:
        cfg = config.from_args(argv)
    except ValueError as err:
        setup_logging("kvstore")
        log.error("invalid configuration", extra={"error": str(err)})
        return 2
    setup_logging("kvstore", cfg.log_level)
    try:
        return servekit_service.run(serve(cfg))
    except OSError as err:
        log.error("kvstore failed", extra={"error": str(err)})
        return 1


async def serve(cfg: KVStoreConfig) -> int:
    """The whole life of one store process; returns the exit status."""
    service = GrpcService(
        "kvstore",
        listen=cfg.listen,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        interceptors=cfg.plane.server_interceptors(),
        credentials=cfg.plane.server_credentials(cfg.listen),
    )
    service.install_signal_handlers()
    arena = await asyncio.to_thread(HostArena.create, cfg.deployment_id, cfg.arena_bytes)
    tasks: list[asyncio.Task[None]] = []
    started = False
    try:
        store = Store(
            arena.name,
            arena.size,
            default_lease_s=cfg.lease_s,
            tenant_quota_blocks=cfg.tenant_quota_blocks,
        )
        service.registry.register(StoreCollector(store, max_tenants=cfg.metrics_max_tenants))
        service.add(pb_grpc.add_KVStoreServicer_to_server, KVStoreServicer(store), SERVICE_NAME)
        await service.start()
        started = True
        expiry = asyncio.create_task(
            _expire_forever(store, cfg.expire_interval_s), name="kvstore-expiry"
        )
        stop = asyncio.create_task(service.wait_for_signal(), name="kvstore-stop")
        tasks = [expiry, stop]
        service.set_serving(True)
        log.info(
            "serving",
            extra={"arena": arena.name, "arena_bytes": arena.size, "arena_auto": cfg.host_kv_auto},
        )
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if expiry.done():
            log.error("lease expiry stopped", exc_info=expiry.exception())
            return 1
        return 0
    finally:
        await _shutdown(service, started, tasks, arena, cfg.shutdown_grace_s)


async def _shutdown(
    service: GrpcService,
    started: bool,
    tasks: list[asyncio.Task[None]],
    arena: HostArena,
    grace_s: float,
) -> None:
    """NOT_SERVING -> stop accepting, drain -> cancel our tasks -> unmap and unlink the arena."""
    log.info("shutting down")
    if started:
        await service.stop(grace_s)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    arena.close()


async def _expire_forever(store: Store, interval_s: float) -> None:
    """Ends overdue leases and drops retained blocks past their ttl every ``interval_s``
    (calls also end an overdue lease they name, and drop blocks past their ttl first)."""
    while True:
        await asyncio.sleep(interval_s)
        store.expire()
