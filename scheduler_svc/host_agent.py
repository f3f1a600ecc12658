"""Runs the core's HostOps against the KV store (gRPC) and hands the answers back to the core.

The core never waits on the network; this task does, off the step loop. Fan-out is bounded.
After every answer the frontend is poked so that sessions waiting for work plan again.

It also follows the store's health (``servekit/health_watch.py``): when a serving store goes
away (killed, restarted, stopped) the core forgets every host copy (``core.on_store_lost``) and
answers to ops sent before that are treated as failures, so nothing names a dead store's blocks.
A restarted store needs no registration from the scheduler: the channel reconnects, and the
workers register again themselves (``worker_svc/store_client.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import grpc

from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from scheduler_svc.core import SchedulerCore
from scheduler_svc.host_ops import HostOp, HostOpKind
from servekit.health_watch import PEER_CHANNEL_OPTIONS, watch_serving
from servekit.planes import InternalPlane

log = logging.getLogger(__name__)


class HostAgent:
    """Owns the channel to the KV store and the tasks running host ops (bounded by
    `max_in_flight`). Woken by the frontend when the core queued ops; hands each answer back to the
    core (``on_reserved``, ``on_pinned``, ``on_host_failed``) and then tells the
    frontend something changed. Invariant: every task it starts is awaited or cancelled by
    ``run`` before it returns."""

    def __init__(
        self,
        core: SchedulerCore,
        target: str,
        *,
        changed: Callable[[], Awaitable[None]],
        lease_s: float = 60.0,
        max_in_flight: int = 32,
        timeout_s: float = 10.0,
        plane: InternalPlane | None = None,
    ) -> None:
        self._core = core
        self._plane = plane or InternalPlane()
        self._target = target
        self._changed = changed
        self._lease_s = lease_s
        self._timeout_s = timeout_s
        self._limit = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._epoch = 0  # store lifetimes seen lost so far; an op's answer counts in its own

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: take the core's ops and run each, bounded; follow the store's
        health."""
        async with self._plane.channel(self._target, options=PEER_CHANNEL_OPTIONS) as channel:
            stub = kv_grpc.KVStoreStub(channel)
            watch = asyncio.create_task(
                watch_serving(
                    channel, on_up=partial(self._store_up, stub), on_down=self._store_down
                ),
                name="kvstore-watch",
            )
            self._tasks.add(watch)
            try:
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    for op in self._core.take_host_ops():
                        await self._limit.acquire()
                        task = asyncio.create_task(self._run_one(stub, op))
                        self._tasks.add(task)
                        task.add_done_callback(self._done)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._limit.release()

    async def _store_up(self, stub: kv_grpc.KVStoreStub) -> None:
        log.info("KV store serving", extra={"store": self._target, "lost_before": self._epoch})
        await self._time_round_trip(stub)

    async def _time_round_trip(self, stub: kv_grpc.KVStoreStub) -> None:
        """Times one cheap call to a store that has just come up: the round trip a fetch pays
        for its pin is known before the first prompt arrives (pins then keep it current)."""
        started = time.perf_counter()
        try:
            await stub.GetStats(kv.StoreStatsRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError:
            return  # gone again: the next time it comes up is timed
        self._core.note_store_round_trip(time.perf_counter() - started)

    async def _store_down(self) -> None:
        self._epoch += 1
        self._core.on_store_lost()
        await self._changed()

    async def _run_one(self, stub: kv_grpc.KVStoreStub, op: HostOp) -> None:
        epoch = self._epoch
        try:
            await self._call(stub, op, epoch)
        except _Stale:
            if op.kind in (HostOpKind.RESERVE, HostOpKind.PIN):
                self._core.on_host_failed(
                    op.seq, op.kind, "the KV store was lost meanwhile", op.ticket
                )
        await self._changed()

    def _check(self, epoch: int) -> None:
        if epoch != self._epoch:
            raise _Stale

    async def _call(self, stub: kv_grpc.KVStoreStub, op: HostOp, epoch: int) -> None:
        t = self._timeout_s
        check = self._check
        try:
            if op.kind is HostOpKind.RESERVE:
                resp = await stub.Reserve(
                    kv.ReserveRequest(
                        num_blocks=op.num_blocks, lease_s=self._lease_s, owner=f"seq-{op.seq}"
                    ),
                    timeout=t,
                )
                check(epoch)
                blocks = [b for e in resp.extents for b in range(e.start, e.start + e.count)]
                self._core.on_reserved(op.seq, resp.lease_id, blocks, op.ticket)
            elif op.kind is HostOpKind.PIN:
                started = time.perf_counter()
                pin = await stub.Pin(
                    kv.PinRequest(
                        blocks=op.blocks,
                        block_hashes=_wire(op.hashes),
                        lease_s=self._lease_s,
                        owner=f"seq-{op.seq}",
                    ),
                    timeout=t,
                )
                check(epoch)
                self._core.note_store_round_trip(time.perf_counter() - started)
                self._core.on_pinned(op.seq, pin.lease_id, op.ticket)
            elif op.kind is HostOpKind.FREE:
                await stub.Free(
                    kv.FreeRequest(blocks=op.blocks, block_hashes=_wire(op.hashes)), timeout=t
                )
            elif op.lease_id is not None:
                await stub.Release(kv.ReleaseRequest(lease_id=op.lease_id), timeout=t)
        except grpc.aio.AioRpcError as err:
            check(epoch)  # a failure from a store already forgotten is the same failure
            if op.kind in (HostOpKind.RESERVE, HostOpKind.PIN):
                self._core.on_host_failed(
                    op.seq, op.kind, f"{err.code().name}: {err.details()}", op.ticket
                )
            elif err.code() != grpc.StatusCode.NOT_FOUND:  # already gone is fine
                log.warning(
                    "host op failed",
                    extra={"op": op.kind.value, "seq": op.seq, "why": err.code().name},
                )


class _Stale(Exception):
    """An op's answer came from a store lifetime the core has already forgotten."""


def _wire(hashes: tuple[bytes | None, ...]) -> list[bytes]:
    """Block hashes as the store's messages carry them (b"": a private block)."""
    return [h or b"" for h in hashes]
