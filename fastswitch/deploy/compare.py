"""``fastswitch-bench compare``: the same workload and seed against a fresh deployment in each
mode, ``--repeats`` times (the mode order alternates between repeats, so drift of a shared
machine does not always favour one mode), then the medians side by side with ratios.

A ratio is ``other / first`` for figures where lower is better (latencies) and
``first / other`` where higher is better (throughput, attainment, fairness): above 1 means the
first mode (normally ``fastswitch``) did better.

It starts deployments, so it lives beside the launcher; the load generator below it
(``client.loadgen``) knows nothing of deployments. ``fastswitch.bench`` dispatches to it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from client.loadgen.cli import (
    EPILOG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_TARGET,
    EXIT_USAGE,
    INTERRUPTED,
    PROG,
    add_run_args,
    add_workload_args,
    fail,
    params_of,
    prepare_run,
    show_progress,
)
from client.loadgen.plots import PlotData, write_plots
from client.loadgen.report import run_json, write_json
from client.loadgen.runner import RunConfig, RunResult, TargetError
from client.loadgen.stats import Slo
from client.loadgen.summary import HEADLINE, Summary, headline
from client.loadgen.workloads import Workload
from fastswitch.deploy.config import DeploymentConfig, DeploymentError
from fastswitch.deploy.variants import Variant, run_variants
from servekit.names import MODES, POLICIES


@dataclass(frozen=True, slots=True)
class DeploySpec:
    """How each deployment is started (the launcher's arguments, less the mode)."""

    model: str = "tiny"
    workers: int = 1
    device_kv_blocks: int | None = None
    host_kv_gib: float = 0.25
    policy: str = "vtc"
    scheduler_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    start_timeout_s: float = 120.0

    def base(self) -> DeploymentConfig:
        """The deployment of every mode, less the mode: any free port, quiet logs."""
        return DeploymentConfig(
            model=self.model,
            workers=self.workers,
            port=0,
            host_kv_gib=self.host_kv_gib,
            device_kv_blocks=self.device_kv_blocks,
            policy=self.policy,
            log_level="warning",
            extra_scheduler_args=self.scheduler_args,
            extra_worker_args=self.worker_args,
            start_timeout_s=self.start_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class ModeRun:
    mode: str
    repeat: int
    result: RunResult
    summary: Summary


def run_compare(
    workload: Workload,
    cfg: RunConfig,
    deploy: DeploySpec,
    modes: Sequence[str],
    *,
    repeats: int,
    slo: Slo,
    progress: bool,
) -> tuple[list[ModeRun], str | None]:
    """Runs every (repeat, mode); returns the runs and why it stopped early (None: it did not;
    Ctrl-C and a run that stopped early end the comparison). DeploymentError when a deployment
    fails to start."""
    runs: list[ModeRun] = []
    current = ""

    def starting(r: int, v: Variant) -> None:
        nonlocal current
        current = v.label
        print(f"[{r + 1}/{repeats}] {v.label}: starting a deployment ...", file=sys.stderr)

    variants = [Variant(mode, mode) for mode in modes]
    try:
        for run in run_variants(
            workload,
            cfg,
            deploy.base(),
            variants,
            lambda dep: None,
            repeats=repeats,
            slo=slo,
            progress=progress,
            on_start=starting,
        ):
            runs.append(ModeRun(run.label, run.repeat, run.result, run.summary))
            print(
                f"[{run.repeat + 1}/{repeats}] {run.label}: {_brief(run.summary)}", file=sys.stderr
            )
            if run.result.stopped:
                return runs, f"{run.label}: {run.result.stopped}"
    except KeyboardInterrupt:  # while starting: the launcher stopped what it started
        return runs, f"{current}: {INTERRUPTED}"
    return runs, None


def medians(runs: Sequence[ModeRun], modes: Sequence[str]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for mode in modes:
        figures = [headline(m.summary) for m in runs if m.mode == mode]
        out[mode] = {key: _median([f[key] for f in figures]) for key, *_ in HEADLINE}
    return out


def ratio(first: float | None, other: float | None, better: str | None) -> float | None:
    """>1 means ``first`` is better; None when undefined."""
    if better is None or first is None or other is None:
        return None
    num, den = (other, first) if better == "lower" else (first, other)
    return num / den if den > 0 else None


def format_compare(
    med: Mapping[str, Mapping[str, float | None]], modes: Sequence[str], *, title: str
) -> str:
    first, others = modes[0], modes[1:]
    widths = [max(12, len(m) + 2) for m in modes]
    labels = ["ratio" if len(others) == 1 else f"ratio vs {o}" for o in others]
    head = f"  {'metric':<24}" + "".join(f"{m:>{w}}" for m, w in zip(modes, widths, strict=True))
    head += "".join(f"{label:>{len(label) + 4}}" for label in labels)
    lines = [title, "", head]
    for key, label, unit, better in HEADLINE:
        name = f"{label} ({unit})" if unit else label
        row = f"  {name:<24}" + "".join(
            f"{_num(med[m][key]):>{w}}" for m, w in zip(modes, widths, strict=True)
        )
        for o, head_label in zip(others, labels, strict=True):
            x = ratio(med[first][key], med[o][key], better)
            row += f"{'-' if x is None else f'{x:.2f}x':>{len(head_label) + 4}}"
        lines.append(row)
    lines.append(
        f"  ratio > 1: {first} better (latencies: other/{first}; throughput, SLO, "
        f"fairness: {first}/other)"
    )
    return "\n".join(lines)


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} compare",
        description="Start a deployment per mode in turn, run the same workload and seed "
        "against each, and print the medians side by side with ratios.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("deployment")
    d.add_argument(
        "--modes",
        metavar="MODES",
        default="fastswitch,vllm-v1,vllm-baseline",
        help="comma list; first is the one the ratios judge (default %(default)s)",
    )
    d.add_argument(
        "--repeats", metavar="N", type=int, default=1, help="runs per mode; medians are shown"
    )
    d.add_argument("--model", metavar="NAME", default="tiny")
    d.add_argument("--workers", metavar="N", type=int, default=1)
    d.add_argument("--device-kv-blocks", metavar="N", type=int)
    d.add_argument("--host-kv-gib", metavar="GIB", type=float, default=0.25)
    d.add_argument("--policy", metavar="NAME", default="vtc")
    d.add_argument(
        "--scheduler-arg",
        action="append",
        default=[],
        metavar="ARGS",
        help="extra scheduler flags, e.g. --scheduler-arg='--max-num-seqs 8'",
    )
    d.add_argument("--worker-arg", action="append", default=[], metavar="ARGS")
    d.add_argument("--start-timeout", metavar="S", type=float, default=120.0)
    add_workload_args(p)
    add_run_args(p)
    return p


def compare_main(argv: Sequence[str]) -> int:
    a = build_compare_parser().parse_args(argv)
    try:
        modes = [m.strip() for m in a.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES]
        if bad or not modes or len(set(modes)) != len(modes):
            raise ValueError(f"--modes must list distinct modes of {', '.join(MODES)}")
        if a.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {a.policy!r}")
        if a.repeats < 1 or a.workers < 1:
            raise ValueError("--repeats and --workers must be >= 1")
        if a.device_kv_blocks is not None and a.device_kv_blocks < 1:
            raise ValueError(f"--device-kv-blocks must be >= 1, got {a.device_kv_blocks}")
        deploy = DeploySpec(
            model=a.model,
            workers=a.workers,
            device_kv_blocks=a.device_kv_blocks,
            host_kv_gib=a.host_kv_gib,
            policy=a.policy,
            scheduler_args=tuple(x for s in a.scheduler_arg for x in shlex.split(s)),
            worker_args=tuple(x for s in a.worker_arg for x in shlex.split(s)),
            start_timeout_s=a.start_timeout,
        )
        spec, workload, cfg, slo = prepare_run(a, "")
    except (ValueError, RuntimeError) as err:
        return fail(str(err), EXIT_USAGE)
    if not workload.sessions:
        return fail("the workload is empty: raise --duration, --rate or --max-requests", 2)
    try:
        runs, stopped = run_compare(
            workload, cfg, deploy, modes, repeats=a.repeats, slo=slo, progress=show_progress(a)
        )
    except (DeploymentError, TargetError) as err:
        return fail(str(err), EXIT_TARGET)
    done = [m for m in modes if any(r.mode == m for r in runs)]
    med = medians(runs, done)
    extra = f", device_kv_blocks {deploy.device_kv_blocks}" if deploy.device_kv_blocks else ""
    title = (
        f"{PROG} compare: {workload.name}, {len(workload.sessions)} sessions, seed {a.seed}; "
        f"{len(done)} modes x {a.repeats} repeats (medians); model {deploy.model}, "
        f"{deploy.workers} workers, policy {deploy.policy}{extra}"
    )
    notes = [f"  note: {n}" for n in workload.notes]
    if stopped:
        notes.append(f"  STOPPED EARLY: {stopped}")
    print("\n".join([format_compare(med, done, title=title), *notes]), flush=True)
    try:
        if a.json is not None:
            write_json(a.json, _compare_json(a, spec, cfg, deploy, workload, runs, med, done))
            print(f"  wrote {a.json}")
        if a.plot is not None:
            for path in write_plots(a.plot, _plot_data(runs, done)):
                print(f"  wrote {path}")
    except OSError as err:
        return fail(f"cannot write the output: {err}", EXIT_USAGE)
    if stopped:
        return EXIT_INTERRUPTED if stopped.endswith(INTERRUPTED) else EXIT_STOPPED
    return EXIT_OK


def _compare_json(
    a: argparse.Namespace,
    spec: Any,
    cfg: RunConfig,
    deploy: DeploySpec,
    workload: Workload,
    runs: Sequence[ModeRun],
    med: Mapping[str, Mapping[str, float | None]],
    modes: Sequence[str],
) -> dict[str, Any]:
    params = params_of(a, spec, cfg)
    params["deployment"] = asdict(deploy)
    ratios = {
        o: {k: ratio(med[modes[0]][k], med[o][k], b) for k, _, _, b in HEADLINE} for o in modes[1:]
    }
    return {
        "params": params,
        "modes": modes,
        "medians": med,
        "ratios": ratios,
        "runs": [
            {"mode": m.mode, "repeat": m.repeat, "figures": headline(m.summary)}
            | run_json(m.summary, workload=workload, run=m.result, params={})
            for m in runs
        ],
    }


def _plot_data(runs: Sequence[ModeRun], modes: Sequence[str]) -> dict[str, PlotData]:
    out = {}
    for mode in modes:
        mine = [m for m in runs if m.mode == mode]
        records = [r for m in mine for r in m.result.records]
        out[mode] = PlotData(
            [t for r in records if (t := r.ttft_s) is not None],
            [g for r in records for g in r.tbt_s],
            mine[0].summary.timeline,
            mine[0].summary.fairness_window_s,
        )
    return out


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == int(v):
        return f"{v:.0f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _brief(s: Summary) -> str:
    ttft = "-" if s.ttft.p99 is None else f"{s.ttft.p99 * 1e3:.0f} ms"
    return (
        f"{s.finished} finished, {s.failed} failed in {s.wall_s:.1f} s; TTFT P99 {ttft}; "
        f"{s.output_tokens_per_s:.0f} output tok/s"
    )
