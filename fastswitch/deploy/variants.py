"""The same workload and seed against a fresh deployment of each variant, ``repeats`` times.

The variant order is reversed on odd repeats, so drift of a shared machine does not always favour
one side. ``fastswitch-bench compare`` (a variant per mode) and the end-to-end benchmarks (modes
with extra flags) both run through :func:`run_variants`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from client.loadgen.cli import run_once, summarize_run
from client.loadgen.runner import RunConfig, RunResult
from client.loadgen.stats import Slo
from client.loadgen.summary import Summary
from client.loadgen.workloads import Workload
from fastswitch.deploy.config import DeploymentConfig
from fastswitch.deploy.deployment import Deployment

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Variant:
    """A deployment to measure: a label, a mode, and flags added after the base config's."""

    label: str
    mode: str  # one of servekit.names.MODES
    scheduler_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()

    def config(self, base: DeploymentConfig) -> DeploymentConfig:
        """`base` in this variant's mode, with this variant's flags after the base's."""
        return replace(
            base,
            mode=self.mode,
            extra_scheduler_args=(*base.extra_scheduler_args, *self.scheduler_args),
            extra_worker_args=(*base.extra_worker_args, *self.worker_args),
        )


@dataclass(frozen=True, slots=True)
class VariantRun(Generic[M]):
    """One (repeat, variant): the run, its summary, and what `measure` read before the stop."""

    label: str
    repeat: int
    result: RunResult
    summary: Summary
    measured: M


def schedule(variants: Sequence[Variant], repeats: int) -> Iterator[tuple[int, Variant]]:
    """(repeat, variant) in run order: forward on even repeats, reversed on odd ones."""
    for r in range(repeats):
        yield from ((r, v) for v in (variants if r % 2 == 0 else variants[::-1]))


def run_variants(
    workload: Workload,
    cfg: RunConfig,
    base: DeploymentConfig,
    variants: Sequence[Variant],
    measure: Callable[[Deployment], M],
    *,
    repeats: int,
    slo: Slo,
    progress: bool = False,
    on_start: Callable[[int, Variant], None] = lambda r, v: None,
) -> Iterator[VariantRun[M]]:
    """Yields each (repeat, variant) run as it completes; `measure` reads the deployment after
    the run, before it stops. The deployment is stopped before the run is yielded, also when
    the start fails (DeploymentError) or Ctrl-C interrupts (KeyboardInterrupt propagates)."""
    for r, v in schedule(variants, repeats):
        on_start(r, v)
        with Deployment(v.config(base)) as dep:
            result = run_once(workload, replace(cfg, target=dep.address), progress=progress)
            measured = measure(dep)
        yield VariantRun(v.label, r, result, summarize_run(workload, result, slo), measured)
