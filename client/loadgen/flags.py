"""The flags of ``fastswitch-bench`` (shared by ``run`` and ``compare``) and what they build: a
:class:`~client.loadgen.workloads.WorkloadSpec`, a :class:`~client.loadgen.runner.RunConfig`,
an SLO, and the parameters recorded in the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from client.loadgen.arrivals import ARRIVALS
from client.loadgen.priorities import PATTERNS
from client.loadgen.runner import RunConfig
from client.loadgen.stats import Slo
from client.loadgen.transport import is_http
from client.loadgen.workloads import WORKLOADS, WorkloadSpec

DEFAULT_MAX_MODEL_LEN = 2048  # the tiny model's context, when neither flag nor server says
MULTITURN_TENANTS = 4  # conversations are spread over this many tenants by default


def add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--workload", required=True, choices=WORKLOADS)
    g.add_argument(
        "--seed", metavar="N", type=int, default=0, help="everything generated follows from it"
    )
    g.add_argument(
        "--duration", metavar="S", type=float, default=60.0, help="seconds of arrivals (60)"
    )
    g.add_argument(
        "--max-requests", metavar="N", type=int, default=10_000, help="requests in all (10000)"
    )
    g.add_argument("--arrivals", choices=ARRIVALS, help="default: trace for traces, else poisson")
    g.add_argument(
        "--rate",
        metavar="R",
        type=float,
        help="arrivals/s: conversations (multiturn, 1), "
        "requests in all (fairness, 40), requests (traces: the trace's mean)",
    )
    g.add_argument(
        "--burstiness", metavar="CV", type=float, default=1.0, help="gamma: CV of the gaps (1)"
    )
    g.add_argument(
        "--trace",
        metavar="FILE",
        type=Path,
        help="trace file (default: the copy packaged with the load generator)",
    )
    g.add_argument(
        "--time-scale",
        metavar="X",
        type=float,
        default=1.0,
        help="multiply trace times (0.1: ten times faster)",
    )
    g.add_argument(
        "--trace-offset", metavar="S", type=float, default=0.0, help="start this far into a trace"
    )
    g.add_argument(
        "--length-scale",
        metavar="X",
        type=float,
        help="multiply every length (default 1; mooncake 1/16)",
    )
    g.add_argument(
        "--max-model-len",
        metavar="N",
        type=int,
        help="the model's context; lengths are clipped to it (default: the server's, "
        f"else {DEFAULT_MAX_MODEL_LEN})",
    )
    g.add_argument(
        "--max-prompt-tokens", metavar="N", type=int, help="prompt cap (3/4 of the context)"
    )
    g.add_argument(
        "--max-output-tokens", metavar="N", type=int, help="output cap (1/4 of the context)"
    )
    g.add_argument(
        "--tenants",
        metavar="N",
        type=int,
        help=f"multiturn: {MULTITURN_TENANTS} (0 = one per conversation); fairness: 3; traces: 1",
    )
    m = p.add_argument_group(
        "multiturn (distributions: N, uniform:A,B, exp:M, lognormal:M,S, geom:M)"
    )
    m.add_argument(
        "--turns", metavar="DIST", default="geom:5.5", help="turns per conversation (geom:5.5)"
    )
    m.add_argument(
        "--prompt-len", metavar="DIST", default="lognormal:80,1.0", help="new tokens per turn"
    )
    m.add_argument(
        "--output-len", metavar="DIST", default="lognormal:240,0.8", help="reply tokens per turn"
    )
    m.add_argument(
        "--think-time", metavar="DIST", default="exp:3", help="seconds before the next turn"
    )
    chat = m.add_mutually_exclusive_group()
    chat.add_argument(
        "--use-chat",
        dest="use_chat",
        action="store_const",
        const=True,
        help="send turns with the Chat RPC, so later turns reuse retained KV (multiturn default "
        "over gRPC; an http:// target has no conversations and always resends the history)",
    )
    chat.add_argument(
        "--no-chat",
        "--use-generate",
        dest="use_chat",
        action="store_const",
        const=False,
        help="send each turn's whole history with Generate instead",
    )
    f = p.add_argument_group("fairness")
    f.add_argument(
        "--tenant-rates",
        metavar="R",
        type=float,
        nargs="+",
        default=(),
        help="req/s per tenant (default: --rate split 1:2:3...)",
    )
    f.add_argument(
        "--tenant-prompt-lens",
        metavar="DIST",
        nargs="+",
        default=(),
        help="prompt length distribution per tenant (64, 128, ...)",
    )
    f.add_argument(
        "--tenant-output-lens",
        metavar="DIST",
        nargs="+",
        default=(),
        help="output length distribution per tenant (..., 64, 32)",
    )
    f.add_argument(
        "--priority-pattern",
        choices=PATTERNS,
        default="none",
        help="fairness and multiturn: each tenant's priority level changes every "
        "--priority-interval, to a random level (random) or one level up or down unless it "
        "stays (markov, --markov-stay); new requests carry the level, running ones are moved "
        "with SetPriority (none)",
    )
    f.add_argument("--priority-levels", metavar="N", type=int, default=3, help="levels 0..N-1 (3)")
    f.add_argument(
        "--priority-interval", metavar="S", type=float, default=5.0, help="seconds per level"
    )
    f.add_argument(
        "--markov-stay", metavar="P", type=float, default=0.7, help="markov: P(keep the level)"
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--concurrency",
        metavar="N",
        type=int,
        help="requests in flight at most, in all (default: no cap; a cap below the backlog "
        "queues requests first-come-first-served in the client)",
    )
    g.add_argument(
        "--tenant-concurrency",
        metavar="N",
        type=int,
        help="requests in flight at most per tenant (default: no cap)",
    )
    g.add_argument(
        "--request-timeout", metavar="S", type=float, default=300.0, help="deadline per request"
    )
    g.add_argument(
        "--drain-timeout",
        metavar="S",
        type=float,
        default=10.0,
        help="after the duration, wait this long, then cancel what still runs",
    )
    g.add_argument(
        "--max-consecutive-failures",
        metavar="N",
        type=int,
        default=20,
        help="stop the run after this many failed requests in a row",
    )
    g.add_argument(
        "--warmup", metavar="N", type=int, default=2, help="unmeasured requests first (2)"
    )
    g.add_argument(
        "--no-priority-updates",
        action="store_true",
        help="new priority levels apply to new requests only",
    )
    o = p.add_argument_group("output")
    o.add_argument("--ttft-slo", metavar="S", type=float, help="seconds; report SLO attainment")
    o.add_argument("--tbt-slo", metavar="S", type=float, help="seconds, on each request's mean TBT")
    o.add_argument(
        "--json", metavar="FILE", type=Path, help="write every figure and the parameters here"
    )
    o.add_argument("--plot", type=Path, metavar="DIR", help="write PNG figures here")
    o.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress bar (default: when stderr is a terminal)",
    )


def spec_from_args(a: argparse.Namespace, server_max_model_len: int | None = None) -> WorkloadSpec:
    """The workload of the flags; the context is ``--max-model-len``, else the server's (when
    known), else DEFAULT_MAX_MODEL_LEN."""
    tenants = a.tenants
    if tenants is None and a.workload == "multiturn":
        tenants = MULTITURN_TENANTS
    return WorkloadSpec(
        workload=a.workload,
        seed=a.seed,
        duration_s=a.duration,
        max_requests=a.max_requests,
        arrivals=a.arrivals,
        rate=a.rate,
        burstiness=a.burstiness,
        trace=a.trace,
        time_scale=a.time_scale,
        trace_offset_s=a.trace_offset,
        length_scale=a.length_scale,
        max_model_len=a.max_model_len or server_max_model_len or DEFAULT_MAX_MODEL_LEN,
        max_prompt_tokens=a.max_prompt_tokens,
        max_output_tokens=a.max_output_tokens,
        tenants=tenants,
        turns=a.turns,
        prompt_len=a.prompt_len,
        output_len=a.output_len,
        think_time=a.think_time,
        tenant_rates=tuple(a.tenant_rates),
        tenant_prompt_lens=tuple(a.tenant_prompt_lens),
        tenant_output_lens=tuple(a.tenant_output_lens),
        priority_pattern=a.priority_pattern,
        priority_levels=a.priority_levels,
        priority_interval_s=a.priority_interval,
        markov_stay=a.markov_stay,
    )


def run_config_from_args(a: argparse.Namespace, target: str) -> RunConfig:
    """The run config of the flags; multiturn uses Chat by default over gRPC only (the HTTP
    door has no conversations)."""
    use_chat = a.workload == "multiturn" and not is_http(target)
    return RunConfig(
        target=target,
        concurrency=a.concurrency,
        tenant_concurrency=a.tenant_concurrency,
        request_timeout_s=a.request_timeout,
        drain_timeout_s=a.drain_timeout,
        max_consecutive_failures=a.max_consecutive_failures,
        warmup_requests=a.warmup,
        use_chat=use_chat if a.use_chat is None else a.use_chat,
        update_running_priorities=not a.no_priority_updates,
        stats_target=getattr(a, "stats_target", None),
        model_name=getattr(a, "model_name", None),
        api_key=getattr(a, "api_key", None),
        tls_ca=getattr(a, "tls_ca", None),
        multiplex=getattr(a, "grpc_calls", "shared") == "shared",
    )


def slo_from_args(a: argparse.Namespace) -> Slo:
    for name in ("ttft_slo", "tbt_slo"):
        v = getattr(a, name)
        if v is not None and not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    return Slo(a.ttft_slo, a.tbt_slo)


def show_progress(a: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if a.progress is None else bool(a.progress)


def params_of(
    a: argparse.Namespace,
    spec: WorkloadSpec,
    cfg: RunConfig,
    server_max_model_len: int | None = None,
) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        return str(v) if isinstance(v, Path) else v

    return {
        "argv": {k: plain(v) for k, v in vars(a).items()},
        "workload": {k: plain(v) for k, v in dataclasses.asdict(spec).items()},
        "run": dataclasses.asdict(cfg),
        "resolved": {
            "length_scale": spec.scale,
            "max_prompt_tokens": spec.prompt_cap,
            "max_output_tokens": spec.output_cap,
            "tenants": spec.tenant_count,
            "arrivals": spec.arrival_kind,
            "max_model_len": spec.max_model_len,
            "max_model_len_from": (
                "--max-model-len"
                if a.max_model_len
                else "server"
                if server_max_model_len
                else "default"
            ),
        },
    }
