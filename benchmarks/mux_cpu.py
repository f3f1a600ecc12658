"""The multiplexed gRPC client's own CPU per request: ``client/mux.py`` and grpcio, what the HTTP
door (and ``fastswitch-bench --grpc-calls shared``) pays to reach the scheduler.

A fake scheduler in a process of its own serves ``GenerateMany`` with the scheduler's own
:class:`~scheduler_svc.many.ManyCall`; every request gets one token per step of a shared clock
(``--step-ms``), so the chunks of every open stream of one step come in one message, as from
the real scheduler. This process drives ``--streams`` concurrent streams of
``AsyncClient(multiplex=True)`` in a closed loop (each stream opens its next request when its
last one ends, with a deadline as the door's), request lengths spread over
[T/2, 3T/2] tokens so that streams do not all end on the same step. Reported: this process's CPU
(all its threads, grpcio's poller included) per request and per chunk, the median of
``--rounds`` rounds.

    .venv/bin/python benchmarks/mux_cpu.py [--streams 64] [--requests 2000] [--tokens 16]
        [--step-ms 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop

from client import AsyncClient
from proto import scheduler_pb2 as pb
from proto import scheduler_pb2_grpc as pb_grpc
from scheduler_svc.many import ManyCall
from scheduler_svc.servicer import status_for

PROMPT = (1, 2, 3, 4)


class Clock:
    """The fake scheduler's steps: every stream waiting on :meth:`step` wakes on the same tick."""

    def __init__(self, step_s: float) -> None:
        self._step_s = step_s
        self._tick: asyncio.Future[None] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._step_s)
            tick, self._tick = self._tick, None
            if tick is not None:
                tick.set_result(None)

    def step(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick


def chunks_of(request: pb.GenerateRequest) -> list[pb.GenerateChunk]:
    """The fake's answer to `request`: one token a chunk, the last one final."""
    n = request.sampling.max_tokens
    out = [pb.GenerateChunk(request_id=request.request_id, token_ids=[i]) for i in range(n)]
    out[-1].finish_reason = pb.FINISH_REASON_LENGTH
    out[-1].metrics.prompt_tokens = len(request.token_ids.ids)
    return out


class StepServicer(pb_grpc.FastSwitchServicer):
    """GenerateMany over :class:`Clock`, through the scheduler's ManyCall."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def GenerateMany(self, requests, context):  # type: ignore[no-untyped-def]
        async def open_(request: pb.GenerateRequest) -> pb.GenerateRequest:
            return request

        async def chunks(request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateChunk]:
            for chunk in chunks_of(request):
                await self._clock.step()
                yield chunk

        async def close(_: pb.GenerateRequest) -> None:
            pass

        call = ManyCall(
            open=open_,  # type: ignore[arg-type]
            chunks=chunks,  # type: ignore[arg-type]
            close=close,  # type: ignore[arg-type]
            code_of=status_for,
            on_rejected=lambda _: None,
        )
        async for message in call.run(requests):
            yield message


@contextlib.asynccontextmanager
async def fake_scheduler(address: str, step_s: float) -> AsyncIterator[None]:
    """The fake scheduler on `address`, in this process."""
    clock = Clock(step_s)
    ticking = asyncio.create_task(clock.run())
    server = grpc.aio.server()
    pb_grpc.add_FastSwitchServicer_to_server(StepServicer(clock), server)
    server.add_insecure_port(address)
    await server.start()
    try:
        yield
    finally:
        await server.stop(None)
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking


async def serve_forever(address: str, step_s: float) -> None:
    async with fake_scheduler(address, step_s):
        await asyncio.Event().wait()


def lengths(n: int, tokens: int, seed: int = 0) -> list[int]:
    """`n` request lengths spread over [tokens/2, 3*tokens/2] (at least 1)."""
    rng = random.Random(seed)
    lo = max(1, tokens // 2)
    return [rng.randint(lo, lo + tokens) for _ in range(n)]


@dataclass(frozen=True)
class Round:
    requests: int
    chunks: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6

    @property
    def cpu_us_per_chunk(self) -> float:
        return self.cpu_s / self.chunks * 1e6


async def drive(client: AsyncClient, streams: int, sizes: list[int]) -> int:
    """Every request of `sizes` read to its end on `streams` concurrent streams; the chunks."""
    todo = iter(sizes)
    chunks = 0

    async def loop() -> None:
        nonlocal chunks
        for size in todo:
            stream = client.generate_stream(
                prompt_token_ids=PROMPT, max_tokens=size, ignore_eos=True, timeout_s=3600
            )
            while await stream.read_message() is not None:
                chunks += 1

    await asyncio.gather(*(loop() for _ in range(streams)))
    return chunks


async def measure(target: str, streams: int, requests: int, tokens: int, seed: int) -> Round:
    """One round: a warm-up of two requests a stream, then `requests` timed."""
    async with AsyncClient(target, multiplex=True) as client:
        await drive(client, streams, lengths(2 * streams, tokens, seed + 1))
        sizes = lengths(requests, tokens, seed)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        chunks = await drive(client, streams, sizes)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if chunks != sum(sizes):
        raise AssertionError(f"{chunks} chunks read, {sum(sizes)} sent")
    return Round(requests=requests, chunks=chunks, cpu_s=cpu, wall_s=wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=64, help="concurrent streams (64)")
    p.add_argument("--requests", type=int, default=2000, help="timed requests per round (2000)")
    p.add_argument("--tokens", type=int, default=16, help="mean chunks per request (16)")
    p.add_argument("--step-ms", type=float, default=2.0, help="the fake's step (2 ms)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (3)")
    p.add_argument("--serve", metavar="ADDRESS", help=argparse.SUPPRESS)  # the fake's process
    a = p.parse_args(argv)
    if a.serve:
        uvloop.run(serve_forever(a.serve, a.step_ms / 1000))
        return 0
    if min(a.streams, a.requests, a.tokens, a.rounds) < 1 or a.step_ms <= 0:
        p.error("--streams, --requests, --tokens, --rounds must be >= 1 and --step-ms > 0")
    with tempfile.TemporaryDirectory() as tmp:
        target = f"unix:{Path(tmp) / 'sched.sock'}"
        cmd = [sys.executable, __file__, "--serve", target, "--step-ms", str(a.step_ms)]
        server = subprocess.Popen(cmd)
        try:
            while not (Path(tmp) / "sched.sock").exists():
                time.sleep(0.05)
            rounds = [
                uvloop.run(measure(target, a.streams, a.requests, a.tokens, seed))
                for seed in range(a.rounds)
            ]
        finally:
            server.terminate()
            server.wait()
    per_req = statistics.median(r.cpu_us_per_request for r in rounds)
    per_chunk = statistics.median(r.cpu_us_per_chunk for r in rounds)
    wall = statistics.median(r.wall_s for r in rounds)
    print(
        f"mux client CPU, {a.streams} streams, ~{a.tokens} chunks/request: "
        f"{per_req:.0f} us/request, {per_chunk:.1f} us/chunk, wall {wall:.2f} s "
        f"(median of {a.rounds} rounds; load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
