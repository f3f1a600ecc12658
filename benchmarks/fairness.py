"""Fairness and its cost (issue 12): FCFS, VTC on the vLLM-style baseline, VTC on a current vLLM
and VTC on FastSwitch, same workloads and seed, one run.

Workload ``backlog`` (``fastswitch-bench``'s ``fairness`` generator): one worker, the tiny
model, two tenants sending Poisson streams of ``--rates`` requests/s (80 and 20) of ``--prompt``
prompt + ``--output`` output tokens (128 + 64) for ``--duration`` seconds: together far more
than the worker serves, so both stay backlogged. The light tenant is the one of the lower rate.

Workload ``paper`` (the FastSwitch paper's setting; ``fastswitch-bench --workload multiturn
--tenants N --priority-pattern markov|random``): multi-turn conversations arriving as a Poisson
stream of ``--conv-rate`` per second for ``--duration`` seconds, dealt in turn to ``--tenants``
tenants; ``--turns`` turns each, a turn's prompt the conversation's whole history plus a new
``--message``, ``--reply`` output tokens, ``--think`` seconds after a reply before the next
turn, sent on the Chat API (earlier turns' KV retained). Each tenant's priority level
(0..``--levels``-1) changes every ``--priority-interval`` seconds by ``--pattern``: ``markov``
keeps the level with probability ``--markov-stay`` and else moves one level up or down,
``random`` draws a uniform level; the schedule is seeded (``client.loadgen.priorities``). The
defaults (30 conversations/s, about 4 turns of 64 + 64 tokens, 0.5 s think) keep the worker's
batch mostly full here, requests waiting seconds for their first token.
Priorities reach the scheduler as the load generator sends them to every server: a new turn
carries its tenant's level at the time it is issued (the request's priority field), and when a
level changes the requests of that tenant still in flight are moved with SetPriority. VTC
ranks by tenant counters and ignores priorities (its tenant weights are fixed at start,
``--tenants``, and nothing changes them while it runs), so the ``vtc-*`` configurations serve
the paper's workload as VTC would, fair between tenants whatever their level; the paper's
priority scheduling is measured beside them as ``prio-baseline`` / ``prio-fastswitch``
(``--policy priority`` on ``vllm-baseline`` / ``fastswitch``: the higher level first; a waiting
request that lacks room preempts a running one of a lower level). The light/low columns report
the requests issued at level 0.

Both are open loop with no cap on requests in flight, so every request reaches the server and
the order is the scheduler's, not the client's. Requests still running at the end of the
arrivals are cancelled (``drain 0``), and no turn starts after it: throughput is measured while
the tenants are backlogged. ``--workload backlog|paper|both`` (both: one table each).

Configurations (each a fresh deployment; the order alternates between repeats):

* ``fcfs``: arrival order, no fairness, no preemption for rank (``--policy fcfs``);
* ``vtc-baseline``: VTC on ``--mode vllm-baseline`` (per-layer synchronous swaps, no reuse);
* ``vtc-vllm-v1``: VTC on ``--mode vllm-v1`` (device prefix cache, preemption by recompute);
* ``vtc-fastswitch``: VTC on ``--mode fastswitch``;
* ``paper`` only: ``prio-baseline`` and ``prio-fastswitch`` (above).

Figures (medians of ``--repeats``): requests/s and output tokens/s with their ratio to FCFS,
Jain's index over the tenants' service by the end of the arrivals, the largest service gap
between backlogged tenants against VTC's bound ``2 * max(w_p * L_input, w_q * M)``
(:func:`vtc_bound`, :func:`workload_bound`), the light (``backlog``) or level-0 (``paper``)
requests' TTFT P50/P99 and how many of them had no first token by the end (a starved request
has no TTFT to count), preemptions per second, and where the worker's time went (steps, batch
sizes, swap waits, recomputed prefill, scheduler time).

Service is VTC's, with its weights ``w_p`` = 1 per prompt token and ``w_q`` = 2 per output
token (the scheduler's defaults) and tenant weights 1; the client credits a request's prompt
when its first token arrives, less the tokens the server took from retained KV when it says so
(:func:`charged_prompt`: VTC charges computed work, not cache hits), and each output token when
it arrives. A tenant is *backlogged* while it has a request that has arrived and not yet
received its first token (one waiting in the server's queue, as far as the client can tell);
the gap is the largest difference in service two tenants received over any stretch of time
during which both were backlogged.

    .venv/bin/python benchmarks/fairness.py [--workload both] [--repeats 3] [--duration 20]
        [--rates 80,20] [--prompt 128] [--output 64] [--tenants 4] [--conv-rate 30]
        [--pattern markov] [--seed 0] [--json PATH]

About 17 minutes here (30 deployments of ~30 s; ``backlog`` alone 7). On a busy 2-core machine a
step of 64 sequences of the tiny model can take 200 ms, so a request of 64 output tokens may not
finish within the run (requests/s 0, output tokens/s still counts every token): ``--output 16``
(``--reply lognormal:16,0.5``) then keeps the shape of the workload with requests that finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import Row, format_table, medians, scrape_counters

from client.loadgen.runner import RunConfig, RunResult
from client.loadgen.stats import RequestRecord, Slo, Weights, percentile
from client.loadgen.summary import Summary
from client.loadgen.workloads import Workload, WorkloadSpec, build_workload
from fastswitch.deploy import Deployment, DeploymentConfig
from fastswitch.deploy.variants import Variant, run_variants

CONFIGS = (
    Variant("fcfs", "fastswitch", scheduler_args=("--policy", "fcfs")),
    Variant("vtc-baseline", "vllm-baseline", scheduler_args=("--policy", "vtc")),
    Variant("vtc-vllm-v1", "vllm-v1", scheduler_args=("--policy", "vtc")),
    Variant("vtc-fastswitch", "fastswitch", scheduler_args=("--policy", "vtc")),
)
# The paper's workload also under the policy its changing priorities drive.
PAPER_CONFIGS = (
    *CONFIGS,
    Variant("prio-baseline", "vllm-baseline", scheduler_args=("--policy", "priority")),
    Variant("prio-fastswitch", "fastswitch", scheduler_args=("--policy", "priority")),
)
WEIGHTS = Weights(prompt=1.0, output=2.0)  # the scheduler's --vtc-prompt/output-weight defaults

# ------------------------------------------------------------------ pure parts


def vtc_bound(w_prompt: float, w_output: float, max_input: int, batch_tokens: int) -> float:
    """VTC's bound on the service gap between backlogged tenants (Sheng et al., OSDI'24,
    Theorem 4.4): ``2 * max(w_p * L_input, w_q * M)``, L_input the longest prompt, M the most
    tokens a running batch holds."""
    return 2 * max(w_prompt * max_input, w_output * batch_tokens)


def backlogged(
    records: Sequence[RequestRecord], tenant: str, end_s: float
) -> list[tuple[float, float]]:
    """The stretches of time (merged, in order) during which `tenant` had a request that had
    arrived and not yet received its first token; none extends past `end_s`."""
    spans = sorted(
        (r.scheduled_s, min(end_s, r.token_times[0] if r.token_times else end_s))
        for r in records
        if r.tenant == tenant and r.scheduled_s < end_s
    )
    out: list[tuple[float, float]] = []
    for lo, hi in spans:
        if hi <= lo:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def overlap(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The intersection of two sorted lists of disjoint intervals."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def charged_prompt(r: RequestRecord) -> int:
    """The prompt tokens VTC charges for `r`: those the server computed, not those it took from
    retained KV (a later turn's history); the whole prompt when the server did not say."""
    cached = r.usage.cached_prompt_tokens if r.usage is not None else None
    return r.prompt_tokens - (cached or 0)


def service_events(
    records: Sequence[RequestRecord], tenant: str, w: Weights
) -> list[tuple[float, float]]:
    """(time, service) of each token `tenant` received; the first token of a request also
    carries its charged prompt (:func:`charged_prompt`)."""
    out = []
    for r in records:
        if r.tenant != tenant:
            continue
        prompt = w.prompt * charged_prompt(r)
        for k, t in enumerate(r.token_times):
            out.append((t, w.output + (prompt if k == 0 else 0.0)))
    out.sort()
    return out


def turn_lengths(workload: Workload) -> list[tuple[int, int]]:
    """(prompt, prompt + output) tokens of every turn as sent: a turn's prompt is its
    conversation's history (earlier messages and replies) plus its own message."""
    out = []
    for s in workload.sessions:
        context = 0
        for t in s.turns:
            prompt = context + len(t.message)
            out.append((prompt, prompt + t.max_tokens))
            context = prompt + t.max_tokens
    return out


def workload_bound(workload: Workload, capacity_tokens: int, max_num_seqs: int) -> float:
    """:func:`vtc_bound` for `workload`: L_input its longest prompt (history included), M the
    tokens a full batch of its longest requests holds, at most the worker's KV capacity."""
    lengths = turn_lengths(workload)
    longest_prompt = max(p for p, _ in lengths)
    longest = max(total for _, total in lengths)
    batch = min(capacity_tokens, max_num_seqs * longest)
    return vtc_bound(WEIGHTS.prompt, WEIGHTS.output, longest_prompt, batch)


def max_service_gap(
    records: Sequence[RequestRecord],
    tenants: Sequence[str],
    w: Weights,
    end_s: float,
    tenant_weights: Mapping[str, float] | None = None,
) -> float | None:
    """The largest |service(a) - service(b)| (each divided by its tenant's weight) over any
    time interval [t1, t2] during which both tenants a and b were backlogged; None when no two
    tenants ever were."""
    weight = dict(tenant_weights or {})
    events = {t: service_events(records, t, w) for t in tenants}
    spans = {t: backlogged(records, t, end_s) for t in tenants}
    worst: float | None = None
    for i, a in enumerate(tenants):
        for b in tenants[i + 1 :]:
            for lo, hi in overlap(spans[a], spans[b]):
                steps = [
                    (t, s / weight.get(name, 1.0) * sign)
                    for name, sign in ((a, 1.0), (b, -1.0))
                    for t, s in events[name]
                    if lo <= t <= hi
                ]
                steps.sort()
                d = top = bottom = 0.0
                for _, s in steps:
                    d += s
                    top, bottom = max(top, d), min(bottom, d)
                worst = max(worst or 0.0, top - bottom)
    return worst


# ------------------------------------------------------------- measurement


@dataclass(frozen=True, slots=True)
class Counters:
    """What the run cost on the server, from the workers' and the scheduler's own counters
    over the deployment's life (the deployment is fresh; warm-up requests are a few tokens)."""

    steps: float  # worker steps
    step_s: float  # plan received -> result sent
    forward_s: float  # the steps' forwards
    swap_wait_s: float  # steps held before their forward by swaps
    plans: float  # plans the scheduler made (= steps)
    compute_plans: float  # plans with at least one prefill or decode
    seqs: float  # sequences computing, summed over plans
    prefill_tokens: float  # prompt (and recomputed) tokens prefilled
    decode_tokens: float
    schedule_s: float  # the scheduler's planning and result handling


SCRAPED = {
    "fastswitch_worker_steps_total": "steps",
    "fastswitch_worker_step_seconds_sum": "step_s",
    "fastswitch_worker_forward_seconds_sum": "forward_s",
    "fastswitch_worker_swap_wait_seconds_total": "swap_wait_s",
    "fastswitch_scheduler_plans_total": "plans",
    "fastswitch_scheduler_compute_plans_total": "compute_plans",
    "fastswitch_scheduler_planned_seqs_total": "seqs",
    "fastswitch_scheduler_planned_prefill_tokens_total": "prefill_tokens",
    "fastswitch_scheduler_planned_decode_tokens_total": "decode_tokens",
    "fastswitch_scheduler_schedule_seconds_total": "schedule_s",
}


def scrape(dep: Deployment) -> Counters:
    return Counters(**scrape_counters(dep, SCRAPED))


@dataclass(frozen=True, slots=True)
class Figures:
    """One (repeat, configuration)."""

    label: str
    repeat: int
    requests_per_s: float
    output_tokens_per_s: float
    jain: float | None
    max_gap: float | None
    bound: float | None
    light_ttft_p50_s: float | None
    light_ttft_p99_s: float | None
    light_unserved: int  # light/low requests sent that had no first token by the end
    preemptions_per_s: float | None
    swap_ins: float | None
    recomputes: float | None
    counters: Counters


def figures(
    label: str,
    repeat: int,
    summary: Summary,
    records: Sequence[RequestRecord],
    workload: Workload,
    counters: Counters,
    *,
    light: Callable[[RequestRecord], bool],
    capacity_tokens: int | None,
    max_num_seqs: int,
) -> Figures:
    """`light` picks the requests whose TTFT the light-tenant columns report."""
    srv = summary.server
    wall = max(summary.wall_s, 1e-9)
    ttfts, unserved = light_ttfts(records, light)
    bound = None
    if capacity_tokens is not None:
        bound = workload_bound(workload, capacity_tokens, max_num_seqs)
    return Figures(
        label=label,
        repeat=repeat,
        requests_per_s=summary.requests_per_s,
        output_tokens_per_s=summary.output_tokens_per_s,
        jain=summary.jain,
        max_gap=max_service_gap(records, workload.tenants, WEIGHTS, workload.duration_s),
        bound=bound,
        light_ttft_p50_s=percentile(ttfts, 50),
        light_ttft_p99_s=percentile(ttfts, 99),
        light_unserved=unserved,
        preemptions_per_s=None if srv is None else srv.preemptions / wall,
        swap_ins=None if srv is None else float(srv.swap_ins),
        recomputes=None if srv is None else float(srv.recomputes),
        counters=counters,
    )


def light_ttfts(
    records: Sequence[RequestRecord], light: Callable[[RequestRecord], bool]
) -> tuple[list[float], int]:
    """The TTFTs of the requests `light` picks, and how many of them had no first token by the
    end: those have no TTFT, and are counted apart since a policy that starves them would
    otherwise look the better for it."""
    picked = [r for r in records if light(r)]
    ttfts = [t for r in picked if (t := r.ttft_s) is not None]
    return ttfts, len(picked) - len(ttfts)


def capacity_tokens(result: RunResult, block_size: int) -> int | None:
    """The largest worker's device KV in tokens, from the scheduler's stats after the run."""
    workers = result.after.workers if result.after is not None else ()
    return max(w.num_blocks for w in workers) * block_size if workers else None


# -------------------------------------------------------------------- table


def _per_step(name: str) -> Callable[[Figures], float | None]:
    def f(x: Figures) -> float | None:
        c = x.counters
        return getattr(c, name) / c.compute_plans if c.compute_plans else None

    return f


def _share(name: str) -> Callable[[Figures], float | None]:
    def f(x: Figures) -> float | None:
        c = x.counters
        return 100 * getattr(c, name) / c.step_s if c.step_s else None

    return f


def rows() -> list[Row]:
    ms = 1e3
    return [
        Row("requests/s", lambda x: x.requests_per_s, "higher", "{:.2f}"),
        Row("output tokens/s", lambda x: x.output_tokens_per_s, "higher", "{:.0f}"),
        Row("Jain's index", lambda x: x.jain, None, "{:.3f}"),
        Row("max service gap", lambda x: x.max_gap, None, "{:.0f}"),
        Row("VTC bound", lambda x: x.bound, None, "{:.0f}"),
        Row("light/low TTFT P50 (ms)", lambda x: _scale(x.light_ttft_p50_s, ms), "lower", "{:.0f}"),
        Row("light/low TTFT P99 (ms)", lambda x: _scale(x.light_ttft_p99_s, ms), "lower", "{:.0f}"),
        Row("light/low no 1st token", lambda x: x.light_unserved, "lower", "{:.0f}"),
        Row("preemptions/s", lambda x: x.preemptions_per_s, None, "{:.1f}"),
        Row("swap-ins", lambda x: x.swap_ins, None, "{:.0f}"),
        Row("recomputes", lambda x: x.recomputes, None, "{:.0f}"),
        Row("worker steps", lambda x: x.counters.steps, None, "{:.0f}"),
        Row(
            "steps without compute",
            lambda x: x.counters.plans - x.counters.compute_plans,
            None,
            "{:.0f}",
        ),
        Row("seqs per compute step", _per_step("seqs"), "higher", "{:.1f}"),
        Row("prefill tok per step", _per_step("prefill_tokens"), None, "{:.1f}"),
        Row("decode tok per step", _per_step("decode_tokens"), "higher", "{:.1f}"),
        Row("prefilled tokens", lambda x: x.counters.prefill_tokens, None, "{:.0f}"),
        Row(
            "mean step (ms)",
            lambda x: _mean(x.counters.step_s, x.counters.steps, ms),
            "lower",
            "{:.2f}",
        ),
        Row("forward share (%)", _share("forward_s"), None, "{:.1f}"),
        Row("swap wait share (%)", _share("swap_wait_s"), "lower", "{:.2f}"),
        Row("scheduler time (s)", lambda x: x.counters.schedule_s, "lower", "{:.2f}"),
    ]


def _scale(v: float | None, k: float) -> float | None:
    return None if v is None else v * k


def _mean(total: float, n: float, k: float = 1.0) -> float | None:
    return total / n * k if n else None


# --------------------------------------------------------------------- main


@dataclass(frozen=True, slots=True)
class Setting:
    """One workload of the benchmark: what is sent, against which configurations, whose TTFT
    the light/low columns report, and how it is described."""

    name: str
    workload: Workload
    configs: tuple[Variant, ...]
    run: RunConfig
    light: Callable[[RequestRecord], bool]
    title: str
    notes: tuple[str, ...]


def backlog(a: argparse.Namespace) -> Setting:
    """Workload 1: two backlogged tenants of single requests (the issue's measurement)."""
    rates = tuple(float(r) for r in a.rates.split(","))
    spec = WorkloadSpec(
        workload="fairness",
        seed=a.seed,
        duration_s=a.duration,
        tenants=len(rates),
        tenant_rates=rates,
        tenant_prompt_lens=(f"const:{a.prompt}",) * len(rates),
        tenant_output_lens=(f"const:{a.output}",) * len(rates),
        max_model_len=2048,
        max_requests=100_000,
    )
    workload = build_workload(spec)
    light = workload.tenants[rates.index(min(rates))]
    return Setting(
        "backlog",
        workload,
        CONFIGS,
        RunConfig(target="", drain_timeout_s=0.0, request_timeout_s=120.0),
        lambda r: r.tenant == light,
        f"fairness, backlog: {' + '.join(f'{r:g}' for r in rates)} req/s of {a.prompt} prompt "
        f"+ {a.output} output tokens for {a.duration:g} s (open loop, no client cap), seed "
        f"{a.seed}",
        (f"light/low: the light tenant {light}",),
    )


def paper(a: argparse.Namespace) -> Setting:
    """Workload 2: the FastSwitch paper's multi-turn conversations from tenants whose priority
    levels change by a Markov or random pattern (``fastswitch-bench --workload multiturn
    --tenants N --priority-pattern P``)."""
    spec = WorkloadSpec(
        workload="multiturn",
        seed=a.seed,
        duration_s=a.duration,
        rate=a.conv_rate,
        tenants=a.tenants,
        turns=a.turns,
        prompt_len=a.message,
        output_len=a.reply,
        think_time=a.think,
        max_model_len=2048,
        max_requests=100_000,
        priority_pattern=a.pattern,
        priority_levels=a.levels,
        priority_interval_s=a.priority_interval,
        markov_stay=a.markov_stay,
    )
    workload = build_workload(spec)
    turns = sum(len(s.turns) for s in workload.sessions)
    pattern = (
        f"markov (stay {a.markov_stay:g}, else one level up or down)"
        if a.pattern == "markov"
        else "random (a uniform level)"
    )
    return Setting(
        "paper",
        workload,
        PAPER_CONFIGS,
        RunConfig(target="", drain_timeout_s=0.0, request_timeout_s=120.0, use_chat=True),
        lambda r: r.priority == 0,
        f"fairness, paper: {len(workload.sessions)} conversations ({turns} turns planned) from "
        f"{a.tenants} tenants, Poisson {a.conv_rate:g}/s for {a.duration:g} s, turns "
        f"{a.turns}, message {a.message}, reply {a.reply}, think {a.think} s (Chat, open loop, "
        f"no client cap); priorities {pattern} over {a.levels} levels every "
        f"{a.priority_interval:g} s, seed {a.seed}",
        (
            "light/low: requests issued at priority level 0; vtc-* rank by tenant counters "
            "(priorities ignored), prio-* by the changing levels",
            *workload.notes,
        ),
    )


SETTINGS: dict[str, Callable[[argparse.Namespace], Setting]] = {
    "backlog": backlog,
    "paper": paper,
}


def measure(setting: Setting, a: argparse.Namespace, base: DeploymentConfig) -> list[Figures]:
    """Every (repeat, configuration) of `setting`, in run order."""
    runs: list[Figures] = []
    for run in run_variants(
        setting.workload, setting.run, base, setting.configs, scrape, repeats=a.repeats, slo=Slo()
    ):
        if run.result.stopped:
            raise RuntimeError(f"{run.label}: the run stopped early: {run.result.stopped}")
        x = figures(
            run.label,
            run.repeat,
            run.summary,
            run.result.records,
            setting.workload,
            run.measured,
            light=setting.light,
            capacity_tokens=capacity_tokens(run.result, a.block_size),
            max_num_seqs=a.max_num_seqs,
        )
        runs.append(x)
        print(
            f"[{setting.name} {run.repeat + 1}/{a.repeats}] {run.label}: "
            f"{x.requests_per_s:.1f} req/s, Jain {x.jain or 0:.3f}, "
            f"{x.preemptions_per_s or 0:.1f} preemptions/s",
            file=sys.stderr,
            flush=True,
        )
    return runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--workload",
        choices=(*SETTINGS, "both"),
        default="both",
        help="backlog (two backlogged tenants), paper (multi-turn, changing priorities) or "
        "both, one table each (both)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration (3)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals (20)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("backlog")
    g.add_argument("--rates", default="80,20", help="requests/s per tenant (80,20)")
    g.add_argument("--prompt", type=int, default=128, help="prompt tokens (128)")
    g.add_argument("--output", type=int, default=64, help="output tokens (64)")
    g = p.add_argument_group("paper")
    g.add_argument(
        "--tenants", type=int, default=4, help="tenants, conversations dealt in turn (4)"
    )
    g.add_argument("--conv-rate", type=float, default=30.0, help="conversations/s in all (30)")
    g.add_argument("--turns", default="geom:4", help="turns per conversation (geom:4)")
    g.add_argument("--message", default="lognormal:64,0.5", help="new tokens per turn")
    g.add_argument("--reply", default="lognormal:64,0.5", help="reply tokens per turn")
    g.add_argument("--think", default="exp:0.5", help="seconds before the next turn (exp:0.5)")
    g.add_argument("--pattern", choices=("markov", "random"), default="markov")
    g.add_argument("--levels", type=int, default=3, help="priority levels 0..N-1 (3)")
    g.add_argument("--priority-interval", type=float, default=2.0, help="seconds per level (2)")
    g.add_argument("--markov-stay", type=float, default=0.7, help="markov: P(keep the level)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="the scheduler's batch (64)")
    p.add_argument("--block-size", type=int, default=16, help="the worker's block size (16)")
    p.add_argument(
        "--scheduler-arg",
        action="append",
        default=[],
        help="an extra scheduler flag for every configuration (repeatable, e.g. "
        "--scheduler-arg=--preempt-margin=0)",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write every run and the medians")
    a = p.parse_args(argv)
    if a.repeats < 1 or a.duration <= 0:
        p.error("--repeats must be >= 1 and --duration > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    names = list(SETTINGS) if a.workload == "both" else [a.workload]
    settings = [SETTINGS[n](a) for n in names]
    base = DeploymentConfig(
        model="tiny",
        workers=1,
        port=0,
        block_size=a.block_size,
        max_num_seqs=a.max_num_seqs,
        log_level="warning",
        extra_scheduler_args=tuple(a.scheduler_arg),
    )
    t0 = time.monotonic()
    load_before = os.getloadavg()
    results = {s.name: measure(s, a, base) for s in settings}
    doc: dict[str, object] = {"params": {**vars(a), "json": str(a.json)}}
    for s in settings:
        runs = results[s.name]
        labels = [v.label for v in s.configs]
        title = (
            f"{s.title}; tiny model, 1 worker, max {a.max_num_seqs} seqs; medians of "
            f"{a.repeats} repeats"
        )
        print()
        print(format_table(title, runs, labels, rows(), others_judged=True))
        for note in s.notes:
            print(f"  {note}")
        doc[s.name] = {
            "runs": [asdict(x) for x in runs],
            "medians": medians(runs, labels, rows()),
        }
    print(
        f"  ratio: throughput other/fcfs (> 1 faster than FCFS), latencies fcfs/other; service "
        f"weights w_p={WEIGHTS.prompt:g} w_q={WEIGHTS.output:g} (prompt tokens taken from "
        f"retained KV not charged), tenant weights 1; bound 2*max(w_p*L_input, w_q*M), L_input "
        f"the longest prompt (history included), M = min(KV capacity, max seqs x longest "
        f"request) tokens"
    )
    extra = " ".join(a.scheduler_arg)
    load_after = os.getloadavg()
    print(
        f"  {os.cpu_count()} CPUs, load {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"extra scheduler flags: {extra or 'none'}; wall time {time.monotonic() - t0:.0f} s"
    )
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"  wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
