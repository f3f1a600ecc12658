"""Life cycle of one gRPC service process: serve, report health, expose metrics, shut down in order.

Every service's ``server.py`` builds its servicers and hands them to :class:`GrpcService`::

    service = GrpcService("kvstore", listen=cfg.listen, metrics_port=cfg.metrics_port)
    service.add(add_KVStoreServicer_to_server, servicer, "fastswitch.kvstore.v1.KVStore")
    await service.start()                # listening; health SERVING once set_serving(True)
    service.set_serving(True)
    await service.wait_for_signal()      # SIGTERM / SIGINT, or request_stop()
    await service.stop(grace_s=5)        # NOT_SERVING -> stop accepting -> drain -> closed

Shutdown order (STYLE.md 6) is the caller's: stop() covers health and the listener; the caller then
closes its channels and frees its shared memory.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server

from client.tls import channel_credentials
from servekit.health_watch import PEER_CHANNEL_OPTIONS
from servekit.parent import watch_parent

log = logging.getLogger(__name__)

# No `<name>_created` series beside each counter and histogram: every service's /metrics holds
# exactly the names docs/metrics.md lists (a process-wide setting of prometheus_client, made
# before any service registers a metric).
disable_created_metrics()

Adder = Callable[[Any, grpc.aio.Server], None]


class GrpcService:
    """One process's gRPC server with the standard health and reflection services and /metrics.

    ``interceptors`` run before every servicer (e.g. the internal plane's secret check,
    servekit/planes.py); ``credentials`` make the listener TLS (None: plaintext). A process may
    run several (the scheduler: its public API and its internal plane, each on its own listener).
    """

    def __init__(
        self,
        name: str,
        *,
        listen: str,
        metrics_port: int | None,
        metrics_host: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        max_message_mb: int = 64,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._services: list[str] = []
        opts = [
            ("grpc.max_send_message_length", max_message_mb << 20),
            ("grpc.max_receive_message_length", max_message_mb << 20),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=opts, interceptors=list(interceptors))
        self._credentials = credentials
        self._health = health.aio.HealthServicer()
        self._stop = asyncio.Event()
        self._metrics: Any = None
        self.bound_port: int | None = None
        self.metrics_bound_port: int | None = None

    def add(self, adder: Adder, servicer: object, full_name: str) -> None:
        """Registers a servicer (before start) under its full service name for health/reflection."""
        adder(servicer, self.server)
        self._services.append(full_name)

    async def start(self) -> None:
        """Binds and starts serving; health starts NOT_SERVING until :meth:`set_serving`."""
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        names = [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        if self._credentials is None:
            port = self.server.add_insecure_port(self.listen)
        else:
            port = self.server.add_secure_port(self.listen, self._credentials)
        if port == 0 and not self.listen.startswith("unix:"):
            raise OSError(f"{self.name}: cannot listen on {self.listen}")
        self.bound_port = port
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._metrics_port is not None:
            self._metrics = start_http_server(
                self._metrics_port, addr=self._metrics_host, registry=self.registry
            )
            self.metrics_bound_port = self._metrics[0].server_port
        log.info(
            "listening",
            extra={
                "service": self.name,
                "listen": self.listen,
                "port": port,
                "metrics_port": self.metrics_bound_port,
            },
        )

    def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        task = asyncio.get_running_loop().create_task(self._set_all(status))
        task.add_done_callback(_log_failure)

    async def _set_all(self, status: int) -> None:
        for name in ("", *self._services):
            await self._health.set(name, status)

    def install_signal_handlers(self) -> None:
        """SIGTERM, SIGINT and the launcher's death (``servekit/parent.py``) request the stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        watch_parent(self.request_stop)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_for_signal(self) -> None:
        await self._stop.wait()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Health NOT_SERVING, then stop accepting and let in-flight calls finish for grace_s."""
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self._metrics is not None:
            http_server, thread = self._metrics
            http_server.shutdown()
            http_server.server_close()
            thread.join(timeout=5)
            self._metrics = None
        log.info("stopped", extra={"service": self.name})


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


def run(main: Coroutine[Any, Any, int]) -> int:
    """Runs a service's async main under uvloop (every service's event loop)."""
    import uvloop

    return uvloop.run(main)


async def wait_healthy(
    target: str, *, timeout_s: float, service: str = "", tls_ca: str | None = None
) -> None:
    """Polls grpc.health.v1 on `target` until SERVING; TimeoutError after timeout_s. With
    ``tls_ca`` (a CA file) it dials TLS trusting that CA (a scheduler with ``--tls-cert``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: str = "no answer"
    # A service that is slow to come up: gRPC's default reconnect back-off would grow to two
    # minutes while its socket is missing, and see it late (or after the deadline).
    channel = (
        grpc.aio.insecure_channel(target, options=PEER_CHANNEL_OPTIONS)
        if tls_ca is None
        else grpc.aio.secure_channel(
            target, channel_credentials(tls_ca), options=PEER_CHANNEL_OPTIONS
        )
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{target} not healthy after {timeout_s:.0f}s ({last})")
            try:
                resp = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=min(1.0, remaining)
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as err:
                last = f"{err.code().name}: {err.details()}"
            await asyncio.sleep(0.05)
