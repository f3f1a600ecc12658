"""The HTTP door's cost: ``fastswitch-bench``'s runner through the OpenAI-compatible HTTP door
vs through gRPC, the same requests against the same deployment, in one run.

One deployment (the tiny model, 1 worker, enough device KV blocks that nothing is preempted,
``--max-num-seqs`` = the concurrency), with both doors. Each repeat runs the same request set
through both doors, the order alternating (gRPC first on even repeats, HTTP first on odd ones,
so drift of a shared machine does not always favour one door):

* **streaming**: a closed loop of ``C`` concurrent streams (default 64): every stream sends its
  next request when its previous one ends (the runner with ``concurrency = C`` and every
  request due at once). ``N`` requests of ``P`` random prompt tokens and ``T`` output tokens
  (``ignore_eos``, greedy).
* **ceiling**: the same loop with ``max_tokens`` 1: the requests/s each door sustains.
* **serial**: one stream (``S`` requests one after another, ``T`` output tokens): the door's
  own latency, apart from what its CPU and its client's take from a saturated machine.

Both doors reach the scheduler the same way: the bench's gRPC runs send every request on one
multiplexed GenerateMany call (``--grpc-calls shared``, the bench's default), and so does the
door for its clients (``--scheduler-calls shared``); the difference is the door itself.

The client measures both doors with the same code (the runner stamps each streamed piece on
arrival): TTFT = first token - request sent (the wait for a client slot is not the door's),
TBT = every gap between consecutive tokens (per token), requests/s = finished / wall time.
Reported per door: the medians over repeats of each figure; the added latency HTTP - gRPC and
the ratio HTTP / gRPC are the medians over repeats of each repeat's difference and ratio (the
two doors of one repeat ran back to back). The target of the issue: the door adds under 1 ms
to TTFT and TBT at P50 and P99 with 64 streams.

    .venv/bin/python benchmarks/http_door.py [--quick] [--repeats 5] [--concurrency 64]
        [--json PATH]

About 3 minutes here (one deployment, 5 repeats of 6 runs); ``--quick`` (2 repeats, half the
requests) about a minute; more when other work loads the machine. The machine's load average
is printed and written with the results: the client, the door, the scheduler and the worker
share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from client.loadgen.runner import RunConfig, Runner, RunResult
from client.loadgen.stats import Percentiles, Status
from client.loadgen.workloads import Session, Turn, Workload
from fastswitch.deploy import Deployment

DOORS = ("grpc", "http")
TARGET_MS = 1.0  # the bound on the door's added TTFT and TBT


@dataclass(frozen=True, slots=True)
class Figures:
    """One run through one door."""

    door: str
    phase: str  # "stream" | "ceiling" | "serial"
    repeat: int
    finished: int
    failed: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    tbt_p50_ms: float | None
    tbt_p99_ms: float | None
    tbt_samples: int
    requests_per_s: float
    preemptions: int | None  # the scheduler's, over the run (should be 0: enough KV blocks)
    cpu_ms: dict[str, float]  # CPU per finished request: the client and each service process


def request_set(n: int, prompt_len: int, max_tokens: int, seed: int) -> Workload:
    """``n`` one-turn requests, all due at once (the concurrency cap makes it a closed loop)."""
    rng = random.Random(seed)
    sessions = tuple(
        Session(
            f"r{k:05d}",
            "bench",
            0.0,
            (Turn(tuple(rng.randrange(32, 127) for _ in range(prompt_len)), max_tokens),),
        )
        for k in range(n)
    )
    return Workload(
        name=f"closed-loop-{max_tokens}",
        sessions=sessions,
        tenants=("bench",),
        duration_s=3600.0,
        max_requests=n,
    )


def figures(
    door: str, phase: str, repeat: int, result: RunResult, cpu_s: dict[str, float]
) -> Figures:
    ok = [r for r in result.records if r.status is Status.OK]
    ttft = Percentiles.of(
        [r.token_times[0] - r.sent_s for r in ok if r.token_times and r.sent_s is not None]
    )
    tbt = Percentiles.of([g for r in ok for g in r.tbt_s])
    before, after = result.before, result.after
    return Figures(
        door=door,
        phase=phase,
        repeat=repeat,
        finished=len(ok),
        failed=sum(r.status is Status.FAILED for r in result.records),
        ttft_p50_ms=_ms(ttft.p50),
        ttft_p99_ms=_ms(ttft.p99),
        tbt_p50_ms=_ms(tbt.p50),
        tbt_p99_ms=_ms(tbt.p99),
        tbt_samples=tbt.count,
        requests_per_s=len(ok) / max(result.wall_s, 1e-9),
        preemptions=None
        if before is None or after is None
        else after.preemptions - before.preemptions,
        cpu_ms={k: v * 1e3 / max(1, len(ok)) for k, v in cpu_s.items()},
    )


PROCESSES = ("api", "scheduler", "worker-0")


def cpu_seconds(dep: Deployment) -> dict[str, float]:
    """CPU time used so far (user + system) by this process (the client) and by the door, the
    scheduler and the worker (from /proc; absent where it cannot be read)."""
    out = {"client": time.process_time()}
    tick = os.sysconf("SC_CLK_TCK")
    for name in PROCESSES:
        pid = dep.pid_of(name)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before if k in after}


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def run_door(dep: Deployment, door: str, workload: Workload, concurrency: int) -> RunResult:
    common: dict[str, Any] = {
        "concurrency": concurrency,
        "warmup_requests": 2,
        "request_timeout_s": 300.0,
        "drain_timeout_s": 0.0,
    }
    cfg = (
        RunConfig(dep.address, **common)
        if door == "grpc"
        else RunConfig(dep.http_url, stats_target=dep.address, **common)
    )
    # asyncio's own loop: its time() is the runner's clock, and uvloop's ticks in milliseconds
    result = asyncio.run(Runner(workload, cfg).run())
    if result.stopped:
        raise RuntimeError(f"{door}: the run stopped early: {result.stopped}")
    return result


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


ROWS: tuple[tuple[str, str, str], ...] = (
    ("stream", "ttft_p50_ms", "TTFT P50 (ms)"),
    ("stream", "ttft_p99_ms", "TTFT P99 (ms)"),
    ("stream", "tbt_p50_ms", "TBT P50 (ms)"),
    ("stream", "tbt_p99_ms", "TBT P99 (ms)"),
    ("stream", "requests_per_s", "requests/s"),
    ("ceiling", "requests_per_s", "ceiling requests/s"),
    ("ceiling", "ttft_p50_ms", "ceiling TTFT P50 (ms)"),
    ("serial", "ttft_p50_ms", "1 stream: TTFT P50 (ms)"),
    ("serial", "ttft_p99_ms", "1 stream: TTFT P99 (ms)"),
    ("serial", "tbt_p50_ms", "1 stream: TBT P50 (ms)"),
    ("serial", "tbt_p99_ms", "1 stream: TBT P99 (ms)"),
)


def paired(runs: Sequence[Figures], phase: str, name: str, *, ratio: bool) -> float | None:
    """The median over repeats of HTTP - gRPC (or HTTP / gRPC) for one figure."""
    out = []
    for k in sorted({x.repeat for x in runs}):
        pair = {x.door: getattr(x, name) for x in runs if x.repeat == k and x.phase == phase}
        h, g = pair.get("http"), pair.get("grpc")
        if h is None or g is None or (ratio and g == 0):
            continue
        out.append(h / g if ratio else h - g)
    return median(out)


CPU_ROWS = (
    ("client", "CPU/request: client (ms)"),
    ("api", "CPU/request: door (ms)"),
    ("scheduler", "CPU/request: scheduler (ms)"),
    ("worker-0", "CPU/request: worker (ms)"),
)


def summarize(runs: Sequence[Figures]) -> list[dict[str, Any]]:
    rows = []
    for phase, name, label in ROWS:
        med = {
            door: median([getattr(x, name) for x in runs if x.door == door and x.phase == phase])
            for door in DOORS
        }
        rows.append(
            {
                "label": label,
                "phase": phase,
                "figure": name,
                "grpc": med["grpc"],
                "http": med["http"],
                "added": paired(runs, phase, name, ratio=False),
                "ratio": paired(runs, phase, name, ratio=True),
            }
        )
    streams = [x for x in runs if x.phase == "stream"]
    for key, label in CPU_ROWS:
        grpc = median([x.cpu_ms.get(key) for x in streams if x.door == "grpc"])
        http = median([x.cpu_ms.get(key) for x in streams if x.door == "http"])
        added = None if grpc is None or http is None else http - grpc
        row = {"label": label, "phase": "cpu", "figure": key, "grpc": grpc, "http": http}
        rows.append({**row, "added": added, "ratio": None})
    return rows


def format_table(title: str, rows: Sequence[dict[str, Any]]) -> str:
    def cell(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    w = max(len(r["label"]) for r in rows) + 2
    lines = [
        title,
        "",
        f"  {'metric':<{w}}{'gRPC':>10}{'HTTP':>10}{'HTTP-gRPC':>11}{'HTTP/gRPC':>11}  target",
    ]
    for r in rows:
        verdict = ""
        timed = r["phase"] in ("stream", "serial") and r["figure"].endswith("_ms")
        if timed and r["added"] is not None:
            verdict = f"  {'met' if r['added'] < TARGET_MS else 'NOT met'} (< {TARGET_MS:g} ms)"
        ratio = cell(r["ratio"], "{:.3f}x")
        lines.append(
            f"  {r['label']:<{w}}{cell(r['grpc']):>10}{cell(r['http']):>10}"
            f"{cell(r['added'], '{:+.2f}'):>11}{ratio:>11}{verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repeats, half the requests")
    p.add_argument("--repeats", type=int, default=None, help="repeats (5; quick 2)")
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop streams (64)")
    p.add_argument("--requests", type=int, default=None, help="streaming requests (4C; quick 2C)")
    p.add_argument(
        "--ceiling-requests", type=int, default=None, help="max_tokens-1 requests (8C; quick 4C)"
    )
    p.add_argument(
        "--serial-requests", type=int, default=None, help="one-stream requests (16; quick 8)"
    )
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (32)")
    p.add_argument("--max-tokens", type=int, default=32, help="output tokens (32)")
    p.add_argument("--device-kv-blocks", type=int, default=1024, help="device pool (1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, metavar="PATH", help="write every run and the medians")
    a = p.parse_args(argv)
    c = a.concurrency
    repeats = a.repeats or (2 if a.quick else 5)
    n = a.requests or (2 * c if a.quick else 4 * c)
    n_ceiling = a.ceiling_requests or (4 * c if a.quick else 8 * c)
    n_serial = a.serial_requests or (8 if a.quick else 16)
    if min(c, repeats, n, n_ceiling, n_serial) < 1:
        p.error(
            "--concurrency, --repeats, --requests, --ceiling-requests and --serial-requests "
            "must be >= 1"
        )
    stream_set = request_set(n, a.prompt_len, a.max_tokens, a.seed)
    ceiling_set = request_set(n_ceiling, a.prompt_len, 1, a.seed + 1)
    serial_set = request_set(n_serial, a.prompt_len, a.max_tokens, a.seed + 2)
    load_before = os.getloadavg()
    t0 = time.monotonic()
    dep = Deployment(
        model="tiny",
        workers=1,
        port=0,
        http_port=0,
        device_kv_blocks=a.device_kv_blocks,
        max_num_seqs=c,
        log_level="warning",
    )
    dep.start()
    runs: list[Figures] = []
    try:
        for k in range(repeats):
            order = DOORS if k % 2 == 0 else DOORS[::-1]
            phases = (
                ("stream", stream_set, c),
                ("ceiling", ceiling_set, c),
                ("serial", serial_set, 1),
            )
            for phase, workload, streams in phases:
                for door in order:
                    cpu0 = cpu_seconds(dep)
                    result = run_door(dep, door, workload, streams)
                    cpu = spent(cpu0, cpu_seconds(dep))
                    x = figures(door, phase, k, result, cpu)
                    runs.append(x)
                    print(
                        f"[{k + 1}/{repeats}] {phase:<7} {door:<4}: {x.finished} finished, "
                        f"{x.failed} failed, {x.requests_per_s:.1f} req/s, TTFT P50 "
                        f"{x.ttft_p50_ms or 0:.1f} ms, TBT P50 {x.tbt_p50_ms or 0:.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        dep.stop()
    load_after = os.getloadavg()
    rows = summarize(runs)
    preempted = sum(x.preemptions or 0 for x in runs)
    title = (
        f"HTTP door vs gRPC: {c} closed-loop streams, {n} requests of {a.prompt_len} prompt + "
        f"{a.max_tokens} output tokens (ceiling: {n_ceiling} requests, max_tokens 1; 1 stream: "
        f"{n_serial} requests); tiny "
        f"model, 1 worker, CPU; medians of {repeats} repeats, doors alternating"
    )
    print()
    print(format_table(title, rows))
    print(
        "  HTTP-gRPC and HTTP/gRPC: medians over repeats of each repeat's difference and ratio; "
        "TTFT from the request's send, TBT per token"
    )
    print(
        f"  {os.cpu_count()} CPUs; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (1 min); {preempted} preemptions in all; "
        f"wall time {time.monotonic() - t0:.0f} s"
    )
    if a.json is not None:
        doc = {
            "params": {
                **vars(a),
                "json": str(a.json),
                "repeats": repeats,
                "requests": n,
                "ceiling_requests": n_ceiling,
                "serial_requests": n_serial,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "load_before": load_before,
                "load_after": load_after,
            },
            "runs": [asdict(x) for x in runs],
            "medians": rows,
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"  wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
