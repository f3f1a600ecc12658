"""Multi-turn KV reuse end to end (issue 5): reuse on vs reuse off vs a current vLLM vs the
vLLM-style baseline, same workload and seed, one run.

Workload (``fastswitch-bench``'s ``multiturn`` generator): conversations of ~5.5 turns (geometric)
whose history grows to a few thousand tokens; every turn's prompt is the whole history (earlier
prompts and replies, exact token ids) plus a new message. Conversations arrive as a Poisson
process over the first ``--arrivals`` seconds; their turns follow after a think time.

Variants (each a fresh deployment of the KV-heavy model of ``kv_heavy.py``, one worker):

* ``reuse-on``: FastSwitch mode with ``--retain-generate``: a finished turn's KV is offloaded
  and retained under its content address, the next turn looks up the longest retained prefix,
  swaps it in and prefills only the new tokens (what the Chat API does for conversation turns;
  the load generator sends token ids, so it uses Generate);
* ``reuse-off``: FastSwitch mode with ``--no-retain``: every turn prefills its whole history;
* ``vllm-v1``: a current vLLM (``--mode vllm-v1``): the next turn shares the history's blocks
  that its worker's device cache still holds, and prefills the rest (no host tier);
* ``vllm-baseline``: per-layer synchronous swaps, no reuse, no retention.

Reported per variant (medians over ``--repeats``): TTFT of turns >= 2 (P50/P99; turn 1 for
reference), bytes the swap engine moved per turn (out + in, offloads included), the KV hit
rate (prompt tokens of turns >= 2 taken from retained or cached KV / their prompt tokens) and the
prompt tokens each turn had to prefill. Ratios: other / reuse-on for latencies and bytes,
reuse-on / other for throughput (> 1: reuse-on better).

    .venv/bin/python benchmarks/multiturn.py [--quick] [--repeats 3] [--seed 0]

About 9 minutes here (12 deployments of ~30-50 s, conversations run to their last turn);
``--quick`` about 100 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import DeploySpec, Row, Variant, VariantRun, format_table, ms, run_variants, server
from kv_heavy import build_model_dir, measure_ratio

from client.loadgen.runner import RunConfig
from client.loadgen.stats import Percentiles, Status
from client.loadgen.workloads import WorkloadSpec, build_workload

VARIANTS = (
    Variant("reuse-on", "fastswitch", scheduler_args=("--retain-generate", "0")),
    Variant("reuse-off", "fastswitch", scheduler_args=("--no-retain",)),
    Variant("vllm-v1", "vllm-v1"),
    Variant("vllm-baseline", "vllm-baseline"),
)


def _later(x: VariantRun, first: bool = False) -> list:  # type: ignore[type-arg]
    """Requests of turns >= 2 (or of turn 1) that completed."""
    return [
        r
        for r in x.result.records
        if (r.turn == 0) == first and r.status is Status.OK and r.ttft_s is not None
    ]


def _ttft(q: str, first: bool = False):  # type: ignore[no-untyped-def]
    def f(x: VariantRun) -> float | None:
        return ms(getattr(Percentiles.of([r.ttft_s for r in _later(x, first)]), q))

    return f


def _per_turn_mib(x: VariantRun) -> float | None:
    srv = x.summary.server
    turns = x.summary.finished
    if srv is None or not turns:
        return None
    return (srv.swap_out_bytes + srv.swap_in_bytes) / turns / 2**20


def _hit_rate(x: VariantRun) -> float | None:
    later = [r for r in _later(x) if r.server is not None]
    prompt = sum(r.prompt_tokens for r in later)
    cached = sum(r.server.cached_prompt_tokens for r in later if r.server is not None)
    return 100 * cached / prompt if prompt else None


def _prefilled(x: VariantRun) -> float | None:
    later = [r for r in _later(x) if r.server is not None]
    if not later:
        return None
    return sum(
        r.prompt_tokens - r.server.cached_prompt_tokens for r in later if r.server is not None
    ) / len(later)


def rows() -> list[Row]:
    return [
        Row("TTFT turn>=2 P50 (ms)", _ttft("p50"), "lower"),
        Row("TTFT turn>=2 P99 (ms)", _ttft("p99"), "lower"),
        Row("TTFT turn 1 P50 (ms)", _ttft("p50", first=True), "lower"),
        Row("TTFT turn 1 P99 (ms)", _ttft("p99", first=True), "lower"),
        Row("TBT P99 (ms)", lambda x: ms(x.summary.tbt.p99), "lower"),
        Row("turns finished", lambda x: x.summary.finished, None, "{:.0f}"),
        Row("turns >= 2 finished", lambda x: len(_later(x)), None, "{:.0f}"),
        Row("mean prompt, turn>=2 (tok)", lambda x: _mean_prompt(x), None, "{:.0f}"),
        Row("prefilled/turn>=2 (tok)", _prefilled, "lower", "{:.0f}"),
        Row("hit rate, turn>=2 (%)", _hit_rate, "higher"),
        Row("swapped MiB/turn", _per_turn_mib, "lower", "{:.2f}"),
        Row("preemptions", lambda x: server(x, "preemptions"), None, "{:.0f}"),
        Row("output tokens/s", lambda x: x.summary.output_tokens_per_s, "higher"),
    ]


def _mean_prompt(x: VariantRun) -> float | None:
    later = _later(x)
    return sum(r.prompt_tokens for r in later) / len(later) if later else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~1 minute: fewer conversations, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (3; quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arrivals", type=float, default=None, help="seconds of arrivals (7; 4)")
    p.add_argument("--rate", type=float, default=1.5, help="conversations/s (1.5)")
    p.add_argument("--device-kv-blocks", type=int, default=512, help="device pool (512)")
    p.add_argument("--prompt-len", default="lognormal:360,0.5", help="new tokens per turn")
    p.add_argument("--output-len", default="lognormal:40,0.5", help="reply tokens per turn")
    p.add_argument("--think-time", default="exp:0.5", help="seconds before the next turn")
    a = p.parse_args(argv)
    repeats = a.repeats or (1 if a.quick else 3)
    arrivals = a.arrivals or (4.0 if a.quick else 7.0)
    t0 = time.monotonic()
    print(measure_ratio())
    spec = WorkloadSpec(
        workload="multiturn",
        seed=a.seed,
        duration_s=arrivals + 240.0,  # every conversation's turns, to the last
        rate=a.rate,
        turns="geom:5.5",
        prompt_len=a.prompt_len,
        output_len=a.output_len,
        think_time=a.think_time,
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
            host_kv_gib=3.0,
            scheduler_args=("--max-tokens-limit", "4096"),
        )
        runs = run_variants(workload, cfg, deploy, VARIANTS, repeats=repeats)
    sessions = workload.sessions
    turns = sum(len(s.turns) for s in sessions)
    longest = max(sum(len(t.message) + t.max_tokens for t in s.turns) for s in sessions)
    title = (
        f"multi-turn reuse: {len(sessions)} conversations, {turns} turns "
        f"({turns / len(sessions):.1f} per conversation, longest history {longest} tokens), "
        f"Poisson {a.rate:g}/s for {arrivals:g} s, seed {a.seed}; KV-heavy model, 1 worker, "
        f"{a.device_kv_blocks} device blocks; medians of {repeats} repeats"
    )
    print()
    print(format_table(title, runs, [v.label for v in VARIANTS], rows()))
    print("  ratio > 1: reuse-on better (latencies and bytes other/reuse-on, the rest inverse)")
    print(f"  wall time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
