"""Soak test with chaos (not in CI; scripts/soak.sh runs it): a saturating fairness workload
(fastswitch-bench) against ``fastswitch up``, a random worker or the store SIGKILLed every K
seconds, the RSS of every process sampled. At the end it prints RSS growth per process,
requests finished per interval, failures, and what leaked: device blocks, store leases,
shared-memory files."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from client import AsyncClient
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from servekit import memtrace


def _children(pid: int) -> dict[str, int]:
    """Child processes of `pid` by service name (kvstore, scheduler, worker-N)."""
    out: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if int(stat[1]) != pid or stat[0] == "Z" or "serve" not in argv:
            continue
        service = argv[argv.index("serve") + 1]
        if service == "worker":
            service = argv[argv.index("--worker-id") + 1]
        out[service] = int(entry.name)
    return out


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _store_socket(pid: int) -> str | None:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--listen") + 1] if "--listen" in argv else None


async def _store_leases(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as ch:
        stats = await kv_grpc.KVStoreStub(ch).GetStats(kv.StoreStatsRequest(), timeout=5)
        return stats.active_leases


async def _progress(address: str, timeout_s: float = 5.0) -> tuple[int, int, int]:
    """Requests finished and failed so far, and in flight now (waiting, swapped or running):
    the backlog that the scheduler's RSS grows with when the machine cannot keep up."""
    async with AsyncClient(address, timeout_s=timeout_s) as c:
        s = await c.stats()
        return s.finished, s.failed, s.waiting + s.swapped + s.running


async def _leaked_blocks(address: str) -> int:
    async with AsyncClient(address, timeout_s=5) as c:
        for _ in range(300):
            s = await c.stats()
            taken = sum(w.num_blocks - w.free_blocks for w in s.workers)
            if s.running == 0 and s.waiting == 0 and taken == 0:
                return 0
            await asyncio.sleep(0.1)
        return taken


def _print_memtrace(log: Path) -> None:
    """The scheduler's memtrace lines: RSS beside the traced Python heap, its tables, top sites."""
    print("\n== scheduler memtrace: RSS / traced Python heap (KiB), gc objects, tables ==")
    for line in log.read_text().splitlines():
        if '"memtrace"' not in line:
            continue
        m = json.loads(line)
        print(f"rss {m['rss_kib']:7d}  traced {m['traced_kib']:6d}  malloc used "
              f"{m.get('malloc_used_kib', -1):7d} free {m.get('malloc_free_kib', -1):7d}  "
              f"objects {m['gc_objects']:7d}  tasks {m['tasks']:4d}  {m['sizes']}")  # fmt: skip
        print(f"    grew most: {m['top']}")
        print(f"    since start: {m['top_since_start']}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--chaos", type=float, default=30.0, help="seconds between kills (0: none)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--port", type=int, default=50777)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--memtrace",
        type=float,
        default=0.0,
        metavar="S",
        help="the scheduler logs its Python heap, table sizes and top allocation growth every S "
        "seconds (FASTSWITCH_MEMTRACE_S, servekit/memtrace.py), printed at the end (0: off)",
    )
    args = p.parse_args()
    rng = random.Random(args.seed)
    logs = Path(tempfile.mkdtemp(prefix="fastswitch-soak-"))
    up = subprocess.Popen(
        [sys.executable, "-m", "fastswitch", "up", "--port", str(args.port), "--no-http",
         "--workers", str(args.workers), "--log-dir", str(logs / "services")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **({memtrace.ENV: str(args.memtrace)} if args.memtrace else {})},
    )  # fmt: skip
    assert up.stdout is not None
    for line in up.stdout:
        print(f"[up] {line}", end="")
        if line.startswith("FastSwitch is up"):
            break
    else:
        print("fastswitch up did not start", file=sys.stderr)
        return 1
    launcher_lines: list[str] = []
    out = up.stdout
    reader = threading.Thread(target=lambda: launcher_lines.extend(out), daemon=True)
    reader.start()
    header = (logs / "services" / "kvstore.log").read_text()
    found = re.search(r"of deployment (\w+)", header)
    if found is None:
        print(f"no deployment id in {header!r}", file=sys.stderr)
        return 1
    deployment = found.group(1)
    address = f"127.0.0.1:{args.port}"
    bench_log = open(logs / "bench.log", "w")  # noqa: SIM115 (open for the bench's whole run)
    bench = subprocess.Popen(
        [str(Path(sys.executable).parent / "fastswitch-bench"), "run", "--target", address,
         "--workload", "fairness", "--duration", str(args.minutes * 60), "--rate", str(args.rate),
         "--max-requests", "1000000", "--max-consecutive-failures", "1000000",
         "--request-timeout", "120", "--json", str(logs / "bench.json"), "--no-progress"],
        stdout=bench_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    first_rss: dict[str, int] = {}
    last_rss: dict[str, int] = {}
    # RSS at each interval's end, per process. The warm-up is the first interval (imports done,
    # caches and pools filled) and, with chaos, the next one too: its kill (at the first
    # interval's end) and the recovery are part of the steady state of a chaos soak, and the
    # backlog a kill requeues sets the heap's high-water mark. Growth after it is what a leak
    # would show; growth after the first interval alone is printed beside it.
    rss_by_interval: list[dict[str, int]] = []
    kills: list[str] = []
    intervals: list[tuple[float, int, int]] = []  # (time, finished in it, in flight at its end)
    start = time.monotonic()
    next_kill = start + args.chaos if args.chaos else float("inf")
    next_tick = start
    finished_before = 0
    while bench.poll() is None:
        now = time.monotonic()
        procs = {"launcher": up.pid, **_children(up.pid)}
        for name, pid in procs.items():
            rss = _rss_kib(pid)
            if rss is not None:
                first_rss.setdefault(name, rss)
                last_rss[name] = rss
        if now >= next_tick:
            try:
                finished, _, in_flight = asyncio.run(_progress(address))
                intervals.append((now - start, finished - finished_before, in_flight))
                finished_before = finished
                rss_by_interval.append(dict(last_rss))
            except Exception as err:  # the scheduler is the single point: say so
                intervals.append((now - start, -1, -1))
                print(f"stats failed: {err}")
            next_tick = now + max(args.chaos, 10.0)
        if now >= next_kill:
            victims = [n for n in procs if n.startswith("worker-") or n == "kvstore"]
            victim = rng.choice(victims)
            os.kill(procs[victim], signal.SIGKILL)
            kills.append(f"{now - start:6.1f}s {victim}")
            next_kill = now + args.chaos
        time.sleep(1.0)
    bench_log.close()
    time.sleep(2)
    try:
        finished, failed, _ = asyncio.run(_progress(address, timeout_s=60))
        leaked_blocks = asyncio.run(_leaked_blocks(address))
        store = _children(up.pid).get("kvstore")
        socket = _store_socket(store) if store else None
        leases = asyncio.run(_store_leases(socket)) if socket else -1
    finally:  # the deployment stops even when the scheduler cannot answer
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    reader.join(timeout=10)
    shm = sorted(p.name for p in Path("/dev/shm").glob(f"fastswitch-{deployment}-*"))
    print("\n== kills ==")
    print("\n".join(kills) or "(none)")
    print("\n== launcher ==")
    print("".join(line for line in launcher_lines if "restart" in line or "exited" in line))
    warm_up = 2 if args.chaos else 1
    print(
        "\n== RSS (KiB): first -> after the first interval -> after warm-up "
        f"({warm_up} interval{'s' if warm_up > 1 else ''}) -> last =="
    )
    samples = rss_by_interval or [first_rss]
    # "last" is the last interval's end too: a sample taken later may be of a child the final
    # kill has just restarted (a fresh process, not the one that ran)
    for name in sorted(last_rss):
        a, b = first_rss[name], samples[-1].get(name, last_rss[name])
        w1, w = (samples[min(i, len(samples) - 1)].get(name, a) for i in (1, warm_up))
        print(
            f"{name:10s} {a:9d} -> {w1:9d} -> {w:9d} -> {b:9d}  (after warm-up {b - w:+d} KiB, "
            f"{100 * (b - w) / w:+.1f}%; after the first interval {100 * (b - w1) / w1:+.1f}%)"
        )
    print("\n== requests finished per interval, and the scheduler's and workers' RSS (KiB) ==")
    for (t, n, live), rss in zip(intervals[1:], rss_by_interval[1:], strict=False):
        sample = "  ".join(f"{k} {v}" for k, v in sorted(rss.items()) if k != "launcher")
        print(f"{t:7.1f}s  {n:6d} finished  {live:5d} in flight   {sample}")
    if args.memtrace:
        _print_memtrace(logs / "services" / "scheduler.log")
    print("\n== totals ==")
    print(f"finished {finished}, failed {failed}, bench exit {bench.returncode}")
    print(f"leaked device blocks {leaked_blocks}, store leases left {leases} (before stop)")
    print(f"shm files after stop: {shm or 'none'}")
    print(f"logs: {logs}")
    return 0 if not shm and leaked_blocks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
