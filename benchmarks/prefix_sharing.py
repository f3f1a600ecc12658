"""Prefix sharing end to end (issue 11): FastSwitch against a current vLLM and the paper's
vLLM-style baseline, on a prefix-sharing trace replay and on multi-turn conversations, both
through Generate, side by side in one run.

Workloads (token ids, open loop, every request runs to its end):

* ``mooncake``: a replay of the Mooncake FAST'25 trace shipped with the load generator. Its
  prefix sharing is long-range (a chain of requests continues one begun minutes before), so the
  replay keeps whole chains: the chains whose root block falls in one ``--sample``-th of them,
  every request of each, in trace order, the trace's 17 minutes compressed into
  ``--duration`` seconds. A 512-token hash block becomes one 16-token KV block (lengths / 32),
  prompts are clipped to ``--max-prompt`` tokens, outputs scaled by ``--output-scale``. Chains
  go to ``--tenants`` tenants (a chain stays with its tenant), and every prompt starts with its
  tenant's system block of ``--system-tokens`` tokens.
* ``multiturn``: ``fastswitch-bench``'s multi-turn conversations (one tenant each); a turn's
  prompt is the whole history, exact token ids, plus a new message.

Variants (each repeat starts a fresh deployment of every variant, the tiny model on one worker,
and runs both workloads against it, the mooncake replay first; the variant order alternates
between repeats; the workloads' tenants differ, so the second cannot hit the first's blocks):

* ``fastswitch``: ``--mode fastswitch --device-prefix-cache --retain-generate 0``: the device
  tier (off by default for now) over the host arena, which retains finished Generate requests'
  KV (the Chat API does so for turns; the load generator sends Generate);
* ``vllm-v1``: ``--mode vllm-v1``: device prefix cache, preemption by recompute, no host tier;
* ``vllm-baseline``: per-layer synchronous swaps, no cache, no reuse;
* ``fastswitch-POLICY`` for each ``--host-write`` policy asked: ``fastswitch`` with that policy
  of writing finished blocks to the host arena (``scheduler_svc/swaps.py`` ``HostWrite``).

The device pool (``--device-kv-blocks``) is sized so that the device cache alone cannot hold
the working set (mooncake: the distinct full blocks the prompts name, per tenant; multiturn:
every conversation's whole history, an upper bound, since a conversation's blocks are needed
again only until its last turn); the output says by how much.

Figures (medians of ``--repeats``): TTFT P50/P95/P99, TBT P99, throughput, prompt tokens per
request and those prefilled (as the scheduler planned them, recomputes included), the share of
prompt tokens served per tier (the scheduler's ``fastswitch_cached_prompt_tokens_total``),
device evictions, preemptions. ``reusable`` is what
a cache holding every block forever could serve (mooncake only: a conversation's replies are
not known before the run). Ratios: other / fastswitch for latencies and prefilled tokens,
fastswitch / other for throughput (> 1: ``fastswitch`` better).

    .venv/bin/python benchmarks/prefix_sharing.py [--quick] [--repeats 3] [--seed 0]
        [--device-kv-blocks 160] [--host-write selective] [--workloads mooncake] [--json PATH]

5 to 7 minutes here (9 deployments, each ~15 s to start and ~30 s of runs); ``--quick`` (one
repeat, shorter runs) about 2. On a shared machine the numbers are noisy: compare them within
one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import Row, format_table, medians, ms, scrape_counters

from client.loadgen.cli import run_once, summarize_run
from client.loadgen.runner import RunConfig, RunResult
from client.loadgen.stats import Slo
from client.loadgen.summary import Summary
from client.loadgen.traces import HashBlockTokens, TraceRecord, default_trace, read_mooncake
from client.loadgen.workloads import Session, Turn, Workload, WorkloadSpec, build_workload
from fastswitch.deploy import Deployment, DeploymentConfig
from fastswitch.deploy.variants import Variant, schedule
from scheduler_svc.swaps import HOST_WRITE

BLOCK = 16  # tokens per KV block (the worker's default, passed explicitly)
VARIANTS = (
    Variant(
        "fastswitch",
        "fastswitch",
        scheduler_args=("--device-prefix-cache", "--retain-generate", "0"),
    ),
    Variant("vllm-v1", "vllm-v1"),
    Variant("vllm-baseline", "vllm-baseline"),
)
WORKLOADS = ("mooncake", "multiturn")


def variants(host_writes: Sequence[str] = ()) -> tuple[Variant, ...]:
    """``VARIANTS``, with a ``fastswitch-POLICY`` variant after ``fastswitch`` (the server's
    default host-write policy) for each other policy asked (``--host-write``)."""
    first, *rest = VARIANTS
    extra = tuple(
        replace(
            first,
            label=f"fastswitch-{p}",
            scheduler_args=(*first.scheduler_args, "--host-write", p),
        )
        for p in host_writes
    )
    return (first, *extra, *rest)


# ------------------------------------------------------------------ workloads


@dataclass(frozen=True, slots=True)
class TraceReplay:
    """How the Mooncake trace is replayed (see the module docstring)."""

    sample: int = 32  # keep one chain in this many
    phase: int = 0  # which one
    duration_s: float = 15.0
    tenants: int = 4
    system_tokens: int = 128
    max_prompt: int = 1024
    output_scale: float = 1 / 8
    max_output: int = 64
    seed: int = 0


def chain_key(rec: TraceRecord) -> int:
    """A stable number of the request's chain (its first hash id): equal for every request
    that shares a prefix with it, since sharing starts at the first block."""
    return zlib.crc32(str(rec.hash_ids[0]).encode()) if rec.hash_ids else 0


def trace_workload(records: Sequence[TraceRecord], p: TraceReplay) -> Workload:
    """The kept chains' requests with the trace's times compressed into ``p.duration_s``, each
    prompt its tenant's system block followed by its hash blocks (``BLOCK`` tokens each)."""
    kept = [r for r in records if r.hash_ids and chain_key(r) % p.sample == p.phase]
    if not kept:
        raise ValueError(f"no chain of the trace has phase {p.phase} of {p.sample}")
    span = max(records[-1].t_s - records[0].t_s, 1e-9)
    blocks = HashBlockTokens(BLOCK, p.seed)
    scale = BLOCK / 512  # a trace block is 512 tokens
    sessions = []
    for k, rec in enumerate(kept):
        tenant = f"tenant-{chain_key(rec) // p.sample % p.tenants}"
        system = [
            t for j in range(-(-p.system_tokens // BLOCK)) for t in blocks.block(f"{tenant}/{j}")
        ]
        room = max(1, p.max_prompt - p.system_tokens)
        length = min(room, max(1, round(rec.input_len * scale)))
        ids = system[: p.system_tokens] + blocks.prompt(rec.hash_ids, length, salt=f"row{k}")
        output = min(p.max_output, max(1, round(rec.output_len * p.output_scale)))
        t = (rec.t_s - records[0].t_s) / span * p.duration_s
        sessions.append(Session(f"req-{k:05d}", tenant, t, (Turn(tuple(ids), output),)))
    note = (
        f"Mooncake trace: {len(kept)} of {len(records)} requests (the chains of 1 in "
        f"{p.sample}, phase {p.phase}), {span:.0f} s replayed in {p.duration_s:g} s; hash "
        f"blocks of {BLOCK} tokens after a {p.system_tokens}-token system block per tenant; "
        f"prompts <= {p.max_prompt} tokens, outputs x{p.output_scale:g} <= {p.max_output}"
    )
    tenants = tuple(sorted({s.tenant for s in sessions}))
    return Workload("mooncake", tuple(sessions), tenants, p.duration_s, len(sessions), (note,))


@dataclass(frozen=True, slots=True)
class Reuse:
    """What a cache that never forgets could serve: per tenant, a prompt's longest prefix of
    full blocks some earlier prompt had (at most every full block but the one holding its last
    token, as the scheduler shares)."""

    prompt_tokens: int
    reusable_tokens: int
    distinct_blocks: int  # the working set: distinct full-block prefixes, per tenant


def reuse_bound(workload: Workload, block: int = BLOCK) -> Reuse:
    seen: set[tuple[str, tuple[int, ...]]] = set()
    prompt = reusable = 0
    for s in sorted(workload.sessions, key=lambda s: s.arrival_s):
        ids = s.turns[0].message
        prompt += len(ids)
        full = (len(ids) - 1) // block
        prefixes = [(s.tenant, ids[: (j + 1) * block]) for j in range(full)]
        hit = next((j for j, key in enumerate(prefixes) if key not in seen), full)
        reusable += hit * block
        seen.update(prefixes)
    return Reuse(prompt, reusable, len(seen))


def history_blocks(workload: Workload, block: int = BLOCK) -> int:
    """The working set of conversations: every conversation's whole history in blocks (its
    messages and replies at their max_tokens), each conversation its own tenant."""
    return sum(
        sum(len(t.message) + t.max_tokens for t in s.turns) // block for s in workload.sessions
    )


def multiturn_workload(a: argparse.Namespace) -> Workload:
    """The conversations arriving in the first ``--mt-arrivals`` seconds, with time for all
    their turns (the sessions are those of a longer run's first seconds: same seed, same
    sequence)."""
    spec = WorkloadSpec(
        workload="multiturn",
        seed=a.seed,
        duration_s=a.mt_arrivals,
        rate=a.mt_rate,
        turns=a.mt_turns,
        prompt_len=a.mt_prompt_len,
        output_len=a.mt_output_len,
        think_time=a.mt_think_time,
        max_model_len=2048,
        max_prompt_tokens=a.max_prompt,
        max_output_tokens=a.max_output,
    )
    return replace(build_workload(spec), duration_s=a.mt_arrivals + 240.0)  # turns to the last


# ---------------------------------------------------------------- measurement


@dataclass(frozen=True, slots=True)
class Counters:
    """The scheduler's Prometheus counters over one workload's run (after minus before; the
    load generator's two warm-up requests, a few tokens each, are included)."""

    prompt_tokens: float  # of ended requests, cached ones included
    device_tokens: float  # prompt tokens shared from the worker's cached blocks
    host_tokens: float  # prompt tokens found in the host arena
    prefill_tokens: float  # prompt (and recomputed) tokens the scheduler planned to prefill
    device_evictions: float  # cached device blocks taken back for other allocations
    swap_preemptions: float
    recompute_preemptions: float


SCRAPED = {
    "fastswitch_prompt_tokens_total": "prompt_tokens",
    'fastswitch_cached_prompt_tokens_total{tier="device"}': "device_tokens",
    'fastswitch_cached_prompt_tokens_total{tier="host"}': "host_tokens",
    "fastswitch_scheduler_planned_prefill_tokens_total": "prefill_tokens",
    'fastswitch_cache_evictions_total{tier="device"}': "device_evictions",
    'fastswitch_preemptions_total{kind="swap"}': "swap_preemptions",
    'fastswitch_preemptions_total{kind="recompute"}': "recompute_preemptions",
}


def counters_over(dep: Deployment, run: Callable[[], RunResult]) -> tuple[RunResult, Counters]:
    """``run()``'s result and what the scheduler's counters gained while it ran."""
    before = scrape_counters(dep, SCRAPED)
    result = run()
    after = scrape_counters(dep, SCRAPED)
    return result, Counters(**{k: after[k] - before[k] for k in after})


@dataclass(frozen=True, slots=True)
class Run:
    """One (workload, repeat, variant)."""

    workload: str
    label: str
    repeat: int
    summary: Summary
    counters: Counters


def _share(name: str) -> Callable[[Run], float | None]:
    def f(x: Run) -> float | None:
        total = x.counters.prompt_tokens
        return 100 * getattr(x.counters, name) / total if total else None

    return f


def _per_request(figure: Callable[[Run], float]) -> Callable[[Run], float | None]:
    def f(x: Run) -> float | None:
        return figure(x) / x.summary.finished if x.summary.finished else None

    return f


def rows() -> list[Row]:
    return [
        Row("TTFT P50 (ms)", lambda x: ms(x.summary.ttft.p50), "lower"),
        Row("TTFT P95 (ms)", lambda x: ms(x.summary.ttft.p95), "lower"),
        Row("TTFT P99 (ms)", lambda x: ms(x.summary.ttft.p99), "lower"),
        Row("TBT P99 (ms)", lambda x: ms(x.summary.tbt.p99), "lower"),
        Row("requests/s", lambda x: x.summary.requests_per_s, "higher", "{:.2f}"),
        Row("output tokens/s", lambda x: x.summary.output_tokens_per_s, "higher"),
        Row("finished", lambda x: x.summary.finished, None, "{:.0f}"),
        Row("prompt tok/request", _per_request(lambda x: x.summary.prompt_tokens), None, "{:.0f}"),
        Row(
            "prefilled tok/request",
            _per_request(lambda x: x.counters.prefill_tokens),
            "lower",
            "{:.0f}",
        ),
        Row("device hit rate (%)", _share("device_tokens")),
        Row("host hit rate (%)", _share("host_tokens")),
        Row("device evictions", lambda x: x.counters.device_evictions, None, "{:.0f}"),
        Row("swap preemptions", lambda x: x.counters.swap_preemptions, None, "{:.0f}"),
        Row("recompute preemptions", lambda x: x.counters.recompute_preemptions, None, "{:.0f}"),
    ]


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~2 minutes: shorter runs, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="runs per variant (3; quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device-kv-blocks", type=int, default=160, help="device pool in 16-token blocks (160)"
    )
    p.add_argument("--host-kv-gib", type=float, default=1.0, help="host arena (1: holds it all)")
    p.add_argument("--max-prompt", type=int, default=1024, help="prompt tokens at most (1024)")
    p.add_argument("--max-output", type=int, default=64, help="output tokens at most (64)")
    g = p.add_argument_group("mooncake replay")
    g.add_argument("--duration", type=float, default=None, help="seconds of arrivals (15; 10)")
    g.add_argument("--sample", type=int, default=None, help="keep 1 chain in N (32; quick 64)")
    g.add_argument("--tenants", type=int, default=4, help="tenants the chains go to (4)")
    g.add_argument("--system-tokens", type=int, default=128, help="system block (128)")
    g.add_argument("--output-scale", type=float, default=1 / 8, help="trace outputs x (1/8)")
    g = p.add_argument_group("multi-turn conversations")
    g.add_argument("--mt-arrivals", type=float, default=None, help="seconds (6; quick 3)")
    g.add_argument("--mt-rate", type=float, default=2.0, help="conversations/s (2)")
    g.add_argument("--mt-turns", default="geom:4")
    g.add_argument("--mt-prompt-len", default="lognormal:120,0.5", help="new tokens per turn")
    g.add_argument("--mt-output-len", default="lognormal:24,0.5", help="reply tokens per turn")
    g.add_argument("--mt-think-time", default="exp:0.5", help="seconds before the next turn")
    p.add_argument(
        "--host-write",
        type=_names(HOST_WRITE),
        default=(),
        metavar="P,...",
        help="also run fastswitch with each of these host-write policies ("
        + ",".join(HOST_WRITE)
        + "), beside the server's default",
    )
    p.add_argument(
        "--workloads",
        type=_names(WORKLOADS),
        default=WORKLOADS,
        metavar="W,...",
        help="which workloads to run (" + ",".join(WORKLOADS) + ")",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write every run and the medians")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.duration = a.duration or (10.0 if a.quick else 15.0)
    a.sample = a.sample or (64 if a.quick else 32)
    a.mt_arrivals = a.mt_arrivals or (3.0 if a.quick else 6.0)
    if a.repeats < 1 or a.device_kv_blocks < 1 or a.sample < 1:
        p.error("--repeats, --device-kv-blocks and --sample must be >= 1")
    return a


def _names(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of some of `allowed` (an argparse type)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}, got {text!r}")
        return names

    return parse


def measure(
    workloads: Sequence[Workload],
    base: DeploymentConfig,
    repeats: int,
    log: Callable[[str], None],
    chosen: Sequence[Variant] = VARIANTS,
) -> list[Run]:
    """Every (repeat, variant) in ``schedule``'s order, on a fresh deployment that runs every
    workload in turn; stopped before the next starts (also on an error or Ctrl-C)."""
    cfg = RunConfig(target="", drain_timeout_s=120.0, request_timeout_s=240.0)
    runs = []
    for r, v in schedule(chosen, repeats):
        with Deployment(v.config(base)) as dep:
            for w in workloads:
                go = partial(run_once, w, replace(cfg, target=dep.address), progress=False)
                result, counters = counters_over(dep, go)
                if result.stopped:
                    raise RuntimeError(f"{v.label}: the run stopped early: {result.stopped}")
                x = Run(w.name, v.label, r, summarize_run(w, result, Slo()), counters)
                runs.append(x)
                s = x.summary
                log(
                    f"[{r + 1}/{repeats}] {v.label}, {w.name}: {s.finished} finished, "
                    f"{s.failed} failed in {s.wall_s:.1f} s; TTFT P50 "
                    f"{ms(s.ttft.p50) or 0:.0f} ms"
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t0, load_before = time.monotonic(), os.getloadavg()
    replay = TraceReplay(
        sample=a.sample,
        duration_s=a.duration,
        tenants=a.tenants,
        system_tokens=a.system_tokens,
        max_prompt=a.max_prompt,
        output_scale=a.output_scale,
        max_output=a.max_output,
        seed=a.seed,
    )
    mooncake = trace_workload(read_mooncake(default_trace("mooncake")), replay)
    multiturn = multiturn_workload(a)
    workloads = [w for w in (mooncake, multiturn) if w.name in a.workloads]
    bound = reuse_bound(mooncake)
    working = {"mooncake": bound.distinct_blocks, "multiturn": history_blocks(multiturn)}
    base = DeploymentConfig(
        model="tiny",
        workers=1,
        port=0,
        device_kv_blocks=a.device_kv_blocks,
        block_size=BLOCK,
        host_kv_gib=a.host_kv_gib,
        log_level="warning",
    )
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    chosen = variants(a.host_write)
    runs = measure(workloads, base, a.repeats, log, chosen)
    labels = [v.label for v in chosen]
    print()
    for w in workloads:
        mine = [x for x in runs if x.workload == w.name]
        n = len(w.sessions)
        turns = sum(len(s.turns) for s in w.sessions)
        what = f"{n} requests" if turns == n else f"{n} conversations, {turns} turns"
        blocks = working[w.name]
        title = (
            f"prefix sharing, {w.name}: {what}, seed {a.seed}; tiny model, 1 worker, "
            f"{a.device_kv_blocks} device blocks of {BLOCK} tokens; medians of {a.repeats} "
            f"repeats"
        )
        print(format_table(title, mine, labels, rows()))
        what = "distinct blocks" if w.name == "mooncake" else "blocks of whole histories"
        print(
            f"  working set {blocks} {what} = {blocks / a.device_kv_blocks:.1f}x the device "
            f"pool"
            + (": the device cache alone cannot hold it" if blocks > a.device_kv_blocks else "")
        )
        if w.name == "mooncake":
            print(
                f"  reusable by a cache that never forgets: "
                f"{100 * bound.reusable_tokens / bound.prompt_tokens:.1f}% of prompt tokens"
            )
        for note in w.notes:
            print(f"  note: {note}")
        print()
    print(
        "  ratio > 1: fastswitch better (latencies and prefilled tokens other/fastswitch, "
        "throughput fastswitch/other)"
    )
    for v in chosen:
        print(f"  {v.label}: --mode {v.mode} {' '.join(v.scheduler_args)}".rstrip())
    load_after = os.getloadavg()
    print(
        f"  {os.cpu_count()} CPUs, load {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"(a shared machine: the numbers are noisy); wall time {time.monotonic() - t0:.0f} s"
    )
    if a.json is not None:
        doc = {
            "params": {**vars(a), "json": str(a.json)},
            "working_set_blocks": working,
            "mooncake_reuse_bound": asdict(bound),
            "medians": {
                w.name: medians([x for x in runs if x.workload == w.name], labels, rows())
                for w in workloads
            },
            "runs": [
                {"workload": x.workload, "label": x.label, "repeat": x.repeat}
                | {r.label: r.figure(x) for r in rows()}
                | {"counters": asdict(x.counters)}
                for x in runs
            ],
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"  wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
