"""Cache-aware placement end to end: two workers with the device prefix cache, placement on vs
off, same workload and seed, one run.

Workload: ``multiturn.py``'s conversations (every turn's prompt is the whole history plus a new
message), so each turn's longest cached prefix is on the worker that served the turn before.
Variants (each a fresh deployment of the KV-heavy model of ``kv_heavy.py``, two workers,
``--device-prefix-cache --no-retain``: the device tier alone, so a turn's reuse depends on where
it runs; the host arena, shared by both workers, would hide that):

* ``placement``: ``--locality-max-waits 8`` (the default): a turn goes to the worker holding
  its history when its prefill is done sooner there (docs/architecture.md);
* ``no-placement``: ``--locality-max-waits 0``: a turn goes to whichever worker plans first.

Reported per variant (medians over ``--repeats``): TTFT of turns >= 2 (P50/P99), the device hit
rate of turns >= 2 and the prompt tokens each had to prefill, TBT P99 and throughput.

    .venv/bin/python benchmarks/placement.py [--quick] [--repeats 3] [--seed 0]

About 3 minutes here per repeat; ``--quick`` one repeat of fewer conversations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import DeploySpec, Row, Variant, format_table, ms, run_variants
from kv_heavy import build_model_dir
from multiturn import _hit_rate, _later, _prefilled, _ttft

from client.loadgen.runner import RunConfig
from client.loadgen.workloads import WorkloadSpec, build_workload

DEVICE = ("--device-prefix-cache", "--no-retain")
VARIANTS = (
    Variant("placement", "fastswitch", scheduler_args=(*DEVICE, "--locality-max-waits", "8")),
    Variant("no-placement", "fastswitch", scheduler_args=(*DEVICE, "--locality-max-waits", "0")),
)


def rows() -> list[Row]:
    return [
        Row("TTFT turn>=2 P50 (ms)", _ttft("p50"), "lower"),
        Row("TTFT turn>=2 P99 (ms)", _ttft("p99"), "lower"),
        Row("TBT P99 (ms)", lambda x: ms(x.summary.tbt.p99), "lower"),
        Row("turns >= 2 finished", lambda x: len(_later(x)), None, "{:.0f}"),
        Row("device hit rate, turn>=2 (%)", _hit_rate, "higher"),
        Row("prefilled/turn>=2 (tok)", _prefilled, "lower", "{:.0f}"),
        Row("output tokens/s", lambda x: x.summary.output_tokens_per_s, "higher"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer conversations, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (3; quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrivals", type=float, default=None, help="seconds of arrivals (7; 4)")
    p.add_argument("--rate", type=float, default=1.5, help="conversations/s (1.5)")
    p.add_argument("--device-kv-blocks", type=int, default=256, help="each worker's pool (256)")
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    arrivals = a.arrivals or (4.0 if a.quick else 7.0)
    t0 = time.monotonic()
    spec = WorkloadSpec(
        workload="multiturn",
        seed=a.seed,
        duration_s=arrivals + 240.0,  # every conversation's turns, to the last
        rate=a.rate,
        turns="geom:5.5",
        prompt_len="lognormal:360,0.5",
        output_len="lognormal:40,0.5",
        think_time="exp:0.5",
        max_model_len=4096,
        max_prompt_tokens=3072,
        max_output_tokens=128,
    )
    full = build_workload(spec)
    workload = replace(full, sessions=tuple(s for s in full.sessions if s.arrival_s < arrivals))
    cfg = RunConfig(target="", drain_timeout_s=0.0, request_timeout_s=240.0)
    with tempfile.TemporaryDirectory(prefix="fastswitch-kv-heavy-") as tmp:
        deploy = DeploySpec(
            model=str(build_model_dir(tmp)),
            device_kv_blocks=a.device_kv_blocks,
            host_kv_gib=1.0,
            scheduler_args=("--max-tokens-limit", "4096"),
            workers=2,
        )
        runs = run_variants(workload, cfg, deploy, VARIANTS, repeats=repeats)
    sessions = workload.sessions
    turns = sum(len(s.turns) for s in sessions)
    title = (
        f"cache-aware placement: {len(sessions)} conversations, {turns} turns, Poisson "
        f"{a.rate:g}/s for {arrivals:g} s, seed {a.seed}; KV-heavy model, 2 workers of "
        f"{a.device_kv_blocks} device blocks, device tier only; medians of {repeats} repeats"
    )
    print()
    print(format_table(title, runs, [v.label for v in VARIANTS], rows()))
    print("  ratio > 1: placement better (latencies other/placement, the rest inverse)")
    print(f"  wall time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
