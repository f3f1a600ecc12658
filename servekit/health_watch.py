"""Follows another service's life over gRPC health ``Watch``: one callback when it becomes
SERVING, one when it stops (its stream broke, it answered NOT_SERVING, or it never came back).

A dependent service uses this to notice that a peer it holds state in went away -- a KV store
that died or restarted (its host blocks and leases gone with it) -- and that it came back, to
register again. A peer that restarts is always seen as down, then up: the Watch stream lives on
one connection, and a process that exits closes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING

# Channel options for a peer that may restart: gRPC's default reconnect back-off grows to two
# minutes, during which every call fails at once; a restarted peer should be used within ~1 s.
PEER_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


async def watch_serving(
    channel: grpc.aio.Channel,
    *,
    on_up: Callable[[], Awaitable[None]],
    on_down: Callable[[], Awaitable[None]],
    service: str = "",
    retry_s: float = 0.2,
) -> None:
    """Until cancelled: awaits ``on_up()`` each time the peer turns SERVING and ``on_down()``
    each time a SERVING peer stops being so. Calls alternate, starting with ``on_up``; a peer
    that never served gets no ``on_down``. A failing Watch is retried every ``retry_s``."""
    stub = health_pb2_grpc.HealthStub(channel)
    up = False
    while True:
        try:
            call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
            async for resp in call:
                serving = resp.status == _SERVING
                if serving and not up:
                    up = True
                    await on_up()
                elif not serving and up:
                    up = False
                    await on_down()
        except grpc.aio.AioRpcError as err:
            log.debug("health watch ended", extra={"why": err.code().name})
        if up:  # the stream ended under a serving peer: it is gone
            up = False
            await on_down()
        await asyncio.sleep(retry_s)
