"""Shared harness of the end-to-end benchmarks (context_switch.py, multiturn.py, fairness.py,
prefix_sharing.py).

Each *variant* is a deployment (a launcher mode plus extra flags); every repeat runs the same
workload and seed against a fresh deployment of every variant, the variant order reversed on
odd repeats (drift of a shared machine then does not always favour one side): the launcher's
own variant loop (``fastswitch.deploy.variants``, which ``fastswitch-bench compare`` uses too).
After each run the workers' Prometheus counters give the time spent on swap copies.
"""

from __future__ import annotations

import statistics
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from client.loadgen.runner import RunConfig, RunResult
from client.loadgen.stats import Slo
from client.loadgen.summary import Summary
from client.loadgen.workloads import Workload
from fastswitch.deploy import Deployment, DeploymentConfig
from fastswitch.deploy.compare import ratio
from fastswitch.deploy.variants import Variant
from fastswitch.deploy.variants import run_variants as _run_variants


@dataclass(frozen=True, slots=True)
class DeploySpec:
    model: str
    device_kv_blocks: int
    host_kv_gib: float
    scheduler_args: tuple[str, ...] = ()  # every variant's, before its own
    worker_args: tuple[str, ...] = ()
    workers: int = 1

    def base(self) -> DeploymentConfig:
        return DeploymentConfig(
            model=self.model,
            workers=self.workers,
            port=0,
            host_kv_gib=self.host_kv_gib,
            device_kv_blocks=self.device_kv_blocks,
            log_level="warning",
            extra_scheduler_args=self.scheduler_args,
            extra_worker_args=self.worker_args,
        )


@dataclass(frozen=True, slots=True)
class SwapTime:
    """The workers' own counters over the deployment's life (seconds, summed over workers)."""

    copy_s: float  # the swaps' copies (async: on the engine's thread or CUDA stream, beside steps)
    wait_s: float  # steps held before their forward by swaps (sync: the copies themselves)
    step_s: float  # plan received -> result sent


@dataclass(frozen=True, slots=True)
class VariantRun:
    label: str
    repeat: int
    result: RunResult
    summary: Summary
    swap: SwapTime


def scrape_counters(dep: Deployment, wanted: Mapping[str, str]) -> dict[str, float]:
    """Prometheus samples of the scheduler and the workers, summed into ``wanted``'s fields:
    a key is a sample's name (``fastswitch_worker_steps_total``) or its name with one label
    (``fastswitch_cached_prompt_tokens_total{tier="device"}``); every field starts at 0."""
    totals = dict.fromkeys(wanted.values(), 0.0)
    for child, port in dep.metrics_ports.items():
        if not (child.startswith("worker-") or child == "scheduler"):
            continue
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                keys = [
                    sample.name,
                    *(f'{sample.name}{{{k}="{v}"}}' for k, v in sample.labels.items()),
                ]
                for key in keys:
                    if key in wanted:
                        totals[wanted[key]] += sample.value
    return totals


def scrape_swap_time(dep: Deployment) -> SwapTime:
    totals = scrape_counters(
        dep,
        {
            "fastswitch_worker_swap_copy_seconds_sum": "copy",
            "fastswitch_worker_swap_wait_seconds_total": "wait",
            "fastswitch_worker_step_seconds_sum": "step",
        },
    )
    return SwapTime(totals["copy"], totals["wait"], totals["step"])


def run_variants(
    workload: Workload,
    cfg: RunConfig,
    deploy: DeploySpec,
    variants: Sequence[Variant],
    *,
    repeats: int,
    slo: Slo = Slo(),  # noqa: B008 -- frozen
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> list[VariantRun]:
    runs: list[VariantRun] = []
    for run in _run_variants(
        workload, cfg, deploy.base(), variants, scrape_swap_time, repeats=repeats, slo=slo
    ):
        if run.result.stopped:
            raise RuntimeError(f"{run.label}: the run stopped early: {run.result.stopped}")
        summary = run.summary
        runs.append(VariantRun(run.label, run.repeat, run.result, summary, run.measured))
        log(
            f"[{run.repeat + 1}/{repeats}] {run.label}: {summary.finished} finished, "
            f"{summary.failed} failed, {summary.cancelled} cancelled in {summary.wall_s:.1f} s"
        )
    return runs


def median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a table: how to read a figure from a run (anything with a ``label``), and
    which way is better."""

    label: str
    figure: Callable[[Any], float | None]
    better: str | None = None  # "lower" | "higher" | None (no ratio)
    fmt: str = "{:.1f}"


def medians(
    runs: Sequence[Any], labels: Sequence[str], rows: Sequence[Row]
) -> dict[str, dict[str, float | None]]:
    """Per label (the run's ``label``), per row: the median of the figure over its runs."""
    return {
        lab: {row.label: median([row.figure(x) for x in runs if x.label == lab]) for row in rows}
        for lab in labels
    }


def format_table(
    title: str,
    runs: Sequence[Any],
    labels: Sequence[str],
    rows: Sequence[Row],
    *,
    others_judged: bool = False,
) -> str:
    """Medians per variant; the ratio columns judge ``labels[0]`` against each other variant:
    other/first for lower-is-better figures, first/other for higher-is-better; > 1: the
    first is better. ``others_judged`` turns them round (> 1: the other is better than the
    first, e.g. each configuration against an FCFS reference)."""
    first, others = labels[0], labels[1:]
    med = medians(runs, labels, rows)
    w0 = max(len(r.label) for r in rows) + 2
    widths = [max(12, len(lab) + 2) for lab in labels]
    heads = [f"{o}/{first}" if len(others) > 1 else "ratio" for o in others]
    lines = [
        title,
        "",
        f"  {'metric':<{w0}}"
        + "".join(f"{lab:>{w}}" for lab, w in zip(labels, widths, strict=True))
        + "".join(f"{h:>{max(10, len(h) + 2)}}" for h in heads),
    ]
    for row in rows:
        cells = "".join(
            f"{_fmt(med[lab][row.label], row.fmt):>{w}}"
            for lab, w in zip(labels, widths, strict=True)
        )
        for o, h in zip(others, heads, strict=True):
            pair = (med[o][row.label], med[first][row.label])
            x = ratio(*(pair if others_judged else pair[::-1]), row.better)
            cells += f"{'-' if x is None else f'{x:.2f}x':>{max(10, len(h) + 2)}}"
        lines.append(f"  {row.label:<{w0}}{cells}")
    return "\n".join(lines)


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def server(run: VariantRun, name: str) -> float | None:
    """A scheduler counter over the run (after - before)."""
    srv = run.summary.server
    return None if srv is None else float(getattr(srv, name))


def per_variant(runs: Sequence[VariantRun]) -> Mapping[str, list[VariantRun]]:
    out: dict[str, list[VariantRun]] = {}
    for x in runs:
        out.setdefault(x.label, []).append(x)
    return out


def worker_total(run: VariantRun, name: str) -> float | None:
    """A worker counter of the scheduler's stats over the run (after - before), summed."""
    before, after = run.result.before, run.result.after
    if before is None or after is None:
        return None
    old = {w.worker_id: getattr(w, name) for w in before.workers}
    return float(sum(getattr(w, name) - old.get(w.worker_id, 0) for w in after.workers))
