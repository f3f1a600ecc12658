"""Control-plane overhead: how long a worker waits on the scheduler between steps.

For batch sizes 1, 8 and 32 it starts B greedy requests on a real deployment (KV store, one
worker, scheduler: separate processes over gRPC) and, once all B are decoding, measures over a
window of steady-state steps:

    wait fraction = sum(idle) / (sum(idle) + sum(step))

where `idle` is the worker's step thread waiting for its next plan after a step (the result
going back, the scheduler's update and planning, the plan coming in), and `step` the step
thread's time on the step. Two deployments run side by side, one scheduling synchronously
(`--no-async-scheduling`: plan N+1 once N's result is in) and one asynchronously
(`--async-scheduling`: plan N+1 while N runs), measured alternately; each row is the median of
the repeats, with steps/s of the window and its ratio async/sync.
Goal (issue 12): async under 1% at every batch size.

    .venv/bin/python benchmarks/control_plane.py [--batches 1,8,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from typing import NamedTuple

import grpc

from client import AsyncClient
from fastswitch.deploy import Deployment
from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc


async def _worker_totals(address: str) -> tuple[int, float, float]:
    async with grpc.aio.insecure_channel(address) as ch:
        stats = await api_grpc.FastSwitchStub(ch).GetStats(api.StatsRequest(), timeout=10)
    w = stats.workers[0]
    return w.steps, w.step_s_total, w.idle_s_total


class Window(NamedTuple):
    wait: float  # idle / (idle + step)
    step_s: float  # mean step thread time per step
    idle_s: float  # mean wait per step
    steps_per_s: float  # steps of the window over its wall time


async def measure(address: str, batch: int, tokens: int) -> Window:
    """The steady-state window of one run of `batch` requests."""
    progress = [0] * batch
    warm = asyncio.Event()
    done_window = asyncio.Event()
    lo, hi = 8, tokens - 8

    async with AsyncClient(address, timeout_s=600) as client:

        async def one(i: int) -> None:
            prompt = [(7 * i + j) % 250 for j in range(16)]
            stream = client.generate_stream(
                prompt_token_ids=prompt, max_tokens=tokens, ignore_eos=True, tenant=f"t{i % 4}"
            )
            async for chunk in stream:
                progress[i] += len(chunk.token_ids)
                if min(progress) >= lo:
                    warm.set()
                if min(progress) >= hi:
                    done_window.set()

        tasks = [asyncio.create_task(one(i)) for i in range(batch)]
        await warm.wait()
        s0, t0 = await _worker_totals(address), time.perf_counter()
        await done_window.wait()
        s1, t1 = await _worker_totals(address), time.perf_counter()
        await asyncio.gather(*tasks)
    steps = s1[0] - s0[0]
    step_s = s1[1] - s0[1]
    idle_s = s1[2] - s0[2]
    return Window(idle_s / (idle_s + step_s), step_s / steps, idle_s / steps, steps / (t1 - t0))


SCHEDULING = {"sync": "--no-async-scheduling", "async": "--async-scheduling"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=96, help="tokens generated per request")
    p.add_argument("--model", default="tiny")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    runs: dict[tuple[str, int], list[Window]] = {}
    with contextlib.ExitStack() as stack:
        deps = {
            name: stack.enter_context(
                Deployment(
                    model=args.model,
                    workers=1,
                    port=0,
                    policy="fcfs",
                    extra_scheduler_args=(flag,),
                )
            )
            for name, flag in SCHEDULING.items()
        }
        for _ in range(args.repeats):  # alternating, so both meet the same noise
            for batch in batches:
                for name, dep in deps.items():
                    window = asyncio.run(measure(dep.address, batch, args.tokens))
                    runs.setdefault((name, batch), []).append(window)
    print(f"control plane, model={args.model}, 1 worker, medians of {args.repeats} runs")
    print(
        f"{'batch':>6} {'scheduling':>10} {'step ms':>9} {'wait us':>9} {'wait/step':>10} "
        f"{'steps/s':>9} {'async/sync':>10}"
    )
    for batch in batches:
        rate = {}
        for name in SCHEDULING:
            w = runs[(name, batch)]
            rate[name] = statistics.median(x.steps_per_s for x in w)
            ratio = f"{rate[name] / rate['sync']:>9.2f}x" if name == "async" else ""
            step_ms = statistics.median(x.step_s for x in w) * 1e3
            wait_us = statistics.median(x.idle_s for x in w) * 1e6
            wait = statistics.median(x.wait for x in w) * 100
            print(
                f"{batch:>6} {name:>10} {step_ms:>9.2f} {wait_us:>9.0f} {wait:>9.2f}% "
                f"{rate[name]:>9.1f} {ratio:>10}"
            )
    worst = max(statistics.median(x.wait for x in runs[("async", b)]) for b in batches)
    goal = "met" if worst < 0.01 else "NOT met"
    print(f"goal (async: wait under 1% at every batch size): {goal} (worst {worst * 100:.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
