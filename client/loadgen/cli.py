"""``fastswitch-bench``: the load generator and benchmark harness.

::

    fastswitch-bench [run] --target HOST:PORT --workload WORKLOAD [options]
    fastswitch-bench [run] --target http://HOST:PORT [--stats-target HOST:PORT] ...
    fastswitch-bench compare --modes fastswitch,vllm-baseline --workload WORKLOAD [options]

Exit status: 0 the run completed (failed requests are counted in the report); 1 the run stopped
early because the target kept failing; 2 bad input (flags, trace file); 3 the target cannot be
reached or a deployment did not start; 130 interrupted (Ctrl-C), after a partial report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from client.loadgen.flags import (
    add_run_args,
    add_workload_args,
    params_of,
    run_config_from_args,
    show_progress,
    slo_from_args,
    spec_from_args,
)
from client.loadgen.plots import PlotData, check_plotting, write_plots
from client.loadgen.progress import ProgressBar
from client.loadgen.ready import wait_for_workers
from client.loadgen.report import format_table, run_json, write_json
from client.loadgen.runner import RunConfig, Runner, RunResult, TargetError, probe_max_model_len
from client.loadgen.stats import Slo, Weights
from client.loadgen.summary import Summary, summarize
from client.loadgen.workloads import Workload, WorkloadSpec, build_workload

PROG = "fastswitch-bench"
INTERRUPTED = "interrupted (Ctrl-C)"
EXIT_OK, EXIT_STOPPED, EXIT_USAGE, EXIT_TARGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EPILOG = f"""\
commands:
  {PROG} [run] --target HOST:PORT --workload W ...     benchmark a running deployment
  {PROG} [run] --target http://HOST:PORT ...           the same through its HTTP door
  {PROG} compare --modes fastswitch,vllm-baseline ...  a deployment per mode, side by side

exit status: 0 the run completed (failed requests are counted in the report); 1 it stopped
early because the target kept failing; 2 bad input; 3 the target is unreachable or a
deployment did not start; 130 interrupted (Ctrl-C), after a partial report.
"""


def warn(message: str, bar: ProgressBar | None = None) -> None:
    text = f"{PROG}: warning: {message}"
    if bar is not None:
        bar.message(text)
    else:
        print(text, file=sys.stderr, flush=True)


def run_once(workload: Workload, cfg: RunConfig, *, progress: bool) -> RunResult:
    """Runs a workload on a fresh event loop; Ctrl-C (or SIGTERM) ends it with a partial result,
    a second Ctrl-C interrupts at once. TargetError when the target cannot be benchmarked.
    Warnings go to stderr as they first happen."""
    bar = ProgressBar() if progress else None

    async def go() -> RunResult:
        runner = Runner(
            workload,
            cfg,
            on_progress=bar.update if bar else None,
            on_warning=lambda message: warn(message, bar),
        )
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


def server_max_model_len(
    target: str,
    model_name: str | None = None,
    api_key: str | None = None,
    tls_ca: str | None = None,
) -> int | None:
    """The context the server reports; None when it cannot be asked (the run then says why)."""
    return asyncio.run(
        probe_max_model_len(target, model_name=model_name, api_key=api_key, tls_ca=tls_ca)
    )


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


def prepare_run(
    a: argparse.Namespace, target: str, server_len: int | None = None
) -> tuple[WorkloadSpec, Workload, RunConfig, Slo]:
    """The spec, workload, run config and SLO the flags ask for (ValueError/RuntimeError if bad)."""
    spec = spec_from_args(a, server_len)
    cfg = run_config_from_args(a, target)
    slo = slo_from_args(a)
    if a.plot is not None:
        check_plotting()
    return spec, build_workload(spec), cfg, slo


def build_run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} [run]",
        description="Drive a FastSwitch deployment with a workload and report latency, "
        "throughput, SLO attainment and fairness.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target",
        metavar="ADDR",
        default="127.0.0.1:50051",
        help="the scheduler's gRPC address (HOST:PORT or unix:///PATH), or the "
        "OpenAI-compatible HTTP door (http://HOST:PORT: POST /v1/completions with token ids, "
        "streamed; multiturn then resends each turn's whole history, reused only through the "
        "scheduler's --retain-generate) (default %(default)s)",
    )
    p.add_argument(
        "--stats-target",
        metavar="HOST:PORT",
        help="with an http:// target: the scheduler's gRPC address, for its stats (preemptions, "
        "swaps, per-tenant VTC) and priority changes; without it they are not collected",
    )
    p.add_argument(
        "--model-name",
        metavar="NAME",
        help="with an http:// target: the model to ask for (default: the first of /v1/models)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="API key sent on every call (default $FASTSWITCH_API_KEY; none: no key). A "
        "workload of several tenants needs a service key, or tenants that narrow the key's",
    )
    p.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=os.environ.get("FASTSWITCH_TLS_CA") or None,
        help="a TLS target: dial a gRPC target (and --stats-target) with TLS trusting this CA "
        "file, and verify an https:// target with it (default $FASTSWITCH_TLS_CA)",
    )
    p.add_argument(
        "--grpc-calls",
        choices=("shared", "per-request"),
        default="shared",
        help="a gRPC target: shared sends every request on one multiplexed GenerateMany call "
        "(the bench's own CPU per request stays small, as the HTTP door's does); per-request "
        "opens a Generate call each, as a client with a call per stream does (default "
        "%(default)s; Chat turns always have calls of their own)",
    )
    p.add_argument(
        "--wait-workers",
        metavar="N",
        type=int,
        default=0,
        help="first wait until the scheduler lists N joined workers (polls GetStats; "
        "default 0: no wait)",
    )
    p.add_argument(
        "--wait-timeout",
        metavar="S",
        type=float,
        default=300.0,
        help="give up waiting for --wait-workers after S seconds (exit 3) (default %(default)s)",
    )
    add_workload_args(p)
    add_run_args(p)
    return p


def wait_workers(a: argparse.Namespace) -> int | None:
    """``--wait-workers``: None when the workers joined (or no wait was asked), else the exit
    status after the error is printed."""
    if not a.wait_workers:
        return None

    def waiting(joined: int) -> None:
        print(
            f"{PROG}: waiting for workers: {joined} of {a.wait_workers} joined {a.target}",
            file=sys.stderr,
            flush=True,
        )

    try:
        joined = asyncio.run(
            wait_for_workers(
                a.target,
                a.wait_workers,
                a.wait_timeout,
                on_wait=waiting,
                api_key=a.api_key,
                tls_ca=getattr(a, "tls_ca", None),
            )
        )
    except ValueError as err:
        return fail(str(err), EXIT_USAGE)
    except TargetError as err:
        return fail(str(err), EXIT_TARGET)
    print(f"{PROG}: {joined} workers joined {a.target}", file=sys.stderr, flush=True)
    return None


def run_main(argv: Sequence[str]) -> int:
    a = build_run_parser().parse_args(argv)
    if (code := wait_workers(a)) is not None:
        return code
    try:
        server_len = (
            None
            if a.max_model_len
            else server_max_model_len(a.target, a.model_name, a.api_key, a.tls_ca)
        )
        spec, workload, cfg, slo = prepare_run(a, a.target, server_len)
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
            doc = run_json(
                summary, workload=workload, run=result, params=params_of(a, spec, cfg, server_len)
            )
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
