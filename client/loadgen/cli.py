"""``fastswitch-bench``: the load generator and benchmark harness.

::

    fastswitch-bench [run] --target HOST:PORT --workload WORKLOAD [options]
    fastswitch-bench compare --modes fastswitch,vllm-baseline --workload WORKLOAD [options]

Exit status: 0 the run completed (failed requests are counted in the report); 1 the run stopped
early because the target kept failing; 2 bad input (flags, trace file); 3 the target cannot be
reached or a deployment did not start; 130 interrupted (Ctrl-C), after a partial report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.loadgen.arrivals import ARRIVALS
from client.loadgen.plots import PlotData, check_plotting, write_plots
from client.loadgen.priorities import PATTERNS
from client.loadgen.progress import ProgressBar
from client.loadgen.report import format_table, run_json, write_json
from client.loadgen.runner import RunConfig, Runner, RunResult, TargetError
from client.loadgen.stats import Slo, Weights
from client.loadgen.summary import Summary, summarize
from client.loadgen.workloads import WORKLOADS, Workload, WorkloadSpec, build_workload

PROG = "fastswitch-bench"
INTERRUPTED = "interrupted (Ctrl-C)"
EXIT_OK, EXIT_STOPPED, EXIT_USAGE, EXIT_TARGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EPILOG = f"""\
commands:
  {PROG} [run] --target HOST:PORT --workload W ...     benchmark a running deployment
  {PROG} compare --modes fastswitch,vllm-baseline ...  a deployment per mode, side by side

exit status: 0 the run completed (failed requests are counted in the report); 1 it stopped
early because the target kept failing; 2 bad input; 3 the target is unreachable or a
deployment did not start; 130 interrupted (Ctrl-C), after a partial report.
"""


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
        "--trace", metavar="FILE", type=Path, help="trace file (default: the shared copy)"
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
        default=2048,
        help="the server model's context (tiny: 2048); lengths are clipped to it",
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
        help="multiturn: 0 = one per conversation (default); fairness: 3; traces: 1",
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
    m.add_argument("--use-chat", action="store_true", help="send turns with the Chat RPC")
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
    f.add_argument("--priority-pattern", choices=PATTERNS, default="none")
    f.add_argument("--priority-levels", metavar="N", type=int, default=3)
    f.add_argument(
        "--priority-interval", metavar="S", type=float, default=5.0, help="seconds per level"
    )
    f.add_argument(
        "--markov-stay", metavar="P", type=float, default=0.7, help="markov: P(keep the level)"
    )


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--concurrency", metavar="N", type=int, default=256, help="requests in flight at most"
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


def spec_from_args(a: argparse.Namespace) -> WorkloadSpec:
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
        max_model_len=a.max_model_len,
        max_prompt_tokens=a.max_prompt_tokens,
        max_output_tokens=a.max_output_tokens,
        tenants=a.tenants,
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
    return RunConfig(
        target=target,
        concurrency=a.concurrency,
        request_timeout_s=a.request_timeout,
        drain_timeout_s=a.drain_timeout,
        max_consecutive_failures=a.max_consecutive_failures,
        warmup_requests=a.warmup,
        use_chat=a.use_chat,
        update_running_priorities=not a.no_priority_updates,
    )


def slo_from_args(a: argparse.Namespace) -> Slo:
    for name in ("ttft_slo", "tbt_slo"):
        v = getattr(a, name)
        if v is not None and not v > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    return Slo(a.ttft_slo, a.tbt_slo)


def show_progress(a: argparse.Namespace) -> bool:
    return sys.stderr.isatty() if a.progress is None else bool(a.progress)


def params_of(a: argparse.Namespace, spec: WorkloadSpec, cfg: RunConfig) -> dict[str, Any]:
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
        },
    }


def run_once(workload: Workload, cfg: RunConfig, *, progress: bool) -> RunResult:
    """Runs a workload on a fresh event loop; Ctrl-C (or SIGTERM) ends it with a partial result,
    a second Ctrl-C interrupts at once. TargetError when the target cannot be benchmarked."""
    bar = ProgressBar() if progress else None

    async def go() -> RunResult:
        runner = Runner(workload, cfg, on_progress=bar.update if bar else None)
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            loop.remove_signal_handler(sig)  # a second one takes the default action
            runner.stop(INTERRUPTED if sig == signal.SIGINT else f"stopped by {sig.name}")

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
                loop.add_signal_handler(sig, stop, sig)
                installed.append(sig)
        try:
            return await runner.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(go())
    finally:
        if bar is not None:
            bar.close()


def summarize_run(workload: Workload, result: RunResult, slo: Slo) -> Summary:
    return summarize(
        result.records,
        wall_s=result.wall_s,
        tenants=workload.tenants,
        slo=slo,
        weights=Weights(),
        before=result.before,
        after=result.after,
        fairness_window_s=workload.duration_s,
    )


def exit_code(result: RunResult) -> int:
    if result.stopped == INTERRUPTED:
        return EXIT_INTERRUPTED
    return EXIT_STOPPED if result.stopped else EXIT_OK


def fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} [run]",
        description="Drive a FastSwitch deployment with a workload and report latency, "
        "throughput, SLO attainment and fairness.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target", metavar="HOST:PORT", default="127.0.0.1:50051", help="scheduler address"
    )
    add_workload_args(p)
    add_run_args(p)
    return p


def run_main(argv: Sequence[str]) -> int:
    a = build_run_parser().parse_args(argv)
    try:
        spec = spec_from_args(a)
        cfg = run_config_from_args(a, a.target)
        slo = slo_from_args(a)
        if a.plot is not None:
            check_plotting()
        workload = build_workload(spec)
    except (ValueError, RuntimeError) as err:
        return fail(str(err), EXIT_USAGE)
    if not workload.sessions:
        return fail("the workload is empty: raise --duration, --rate or --max-requests", 2)
    try:
        result = run_once(workload, cfg, progress=show_progress(a))
    except TargetError as err:
        return fail(str(err), EXIT_TARGET)
    summary = summarize_run(workload, result, slo)
    print(format_table(summary, workload=workload, run=result, target=a.target), flush=True)
    try:
        if a.json is not None:
            doc = run_json(summary, workload=workload, run=result, params=params_of(a, spec, cfg))
            write_json(a.json, doc)
            print(f"  wrote {a.json}")
        if a.plot is not None:
            data = PlotData(
                [t for r in result.records if (t := r.ttft_s) is not None],
                [g for r in result.records for g in r.tbt_s],
                summary.timeline,
                summary.fairness_window_s,
            )
            for path in write_plots(
                a.plot, {summary.server.mode if summary.server else "run": data}
            ):
                print(f"  wrote {path}")
    except OSError as err:
        return fail(f"cannot write the output: {err}", EXIT_USAGE)
    return exit_code(result)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "compare":  # starts deployments: the launcher's (fastswitch.bench)
            return fail(
                "compare needs the launcher: run it as `fastswitch-bench compare`", EXIT_USAGE
            )
        return run_main(args[1:] if args and args[0] == "run" else args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
