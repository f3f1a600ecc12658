"""Control-plane overhead: how long a worker waits on the scheduler between steps.

For batch sizes 1, 8 and 32 it starts B greedy requests on a real deployment (KV store, one
worker, scheduler: separate processes over gRPC) and, once all B are decoding, measures over a
window of steady-state steps:

    wait fraction = sum(idle) / (sum(idle) + sum(step))

where `idle` is what the worker spent between sending a step's result and receiving the next plan
(the scheduler's update + planning + two stream messages), and `step` the worker's own step time.
Goal (issue 3): under 5% at batch 32. Repeats each batch size and reports medians.

    .venv/bin/python benchmarks/control_plane.py [--batches 1,8,32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

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


async def measure(address: str, batch: int, tokens: int) -> tuple[float, float, float]:
    """(wait fraction, mean step s, mean idle s) over the steady-state window of one run."""
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
        s0 = await _worker_totals(address)
        await done_window.wait()
        s1 = await _worker_totals(address)
        await asyncio.gather(*tasks)
    steps = s1[0] - s0[0]
    step_s = s1[1] - s0[1]
    idle_s = s1[2] - s0[2]
    return idle_s / (idle_s + step_s), step_s / steps, idle_s / steps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=96, help="tokens generated per request")
    p.add_argument("--model", default="tiny")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with Deployment(model=args.model, workers=1, port=0, policy="fcfs") as dep:
        for batch in batches:
            runs = [
                asyncio.run(measure(dep.address, batch, args.tokens)) for _ in range(args.repeats)
            ]
            frac = statistics.median(r[0] for r in runs)
            step = statistics.median(r[1] for r in runs)
            idle = statistics.median(r[2] for r in runs)
            rows.append((batch, frac, step, idle))
    print(f"control plane, model={args.model}, 1 worker, medians of {args.repeats} runs")
    print(f"{'batch':>6} {'step ms':>9} {'wait us':>9} {'wait/step':>10}")
    for batch, frac, step, idle in rows:
        print(f"{batch:>6} {step * 1e3:>9.2f} {idle * 1e6:>9.0f} {frac * 100:>9.2f}%")
    worst = max(r[1] for r in rows if r[0] == max(batches))
    goal = "met" if worst < 0.05 else "NOT met"
    print(f"goal (< 5% at batch {max(batches)}): {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
