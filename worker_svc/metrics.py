"""The worker's metrics: Prometheus counters updated after every step, and the stats snapshot
that ``GetWorkerStats`` answers with."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker_svc.device_pool import DevicePool
from worker_svc.executor import StepExecutor
from worker_svc.plan import StepResult
from worker_svc.telemetry import GpuTelemetry, Telemetry


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One snapshot of the worker (``GetWorkerStats``). ``gpu``: the telemetry read now, or
    None, and then ``gpu_unavailable`` says why ("not available: <why>")."""

    worker_id: str
    device: str
    num_blocks: int
    live_seqs: int
    steps: int
    swap_out_bytes: int
    swap_in_bytes: int
    gpu: GpuTelemetry | None = None
    gpu_unavailable: str | None = None


class StepMetrics:
    """Prometheus view of the steps, in ``registry``; ``on_step`` runs on the event loop after
    each step's result is sent."""

    def __init__(self, registry: CollectorRegistry, executor: StepExecutor) -> None:
        self._executor = executor
        self._steps = Counter("fastswitch_worker_steps", "Steps executed", registry=registry)
        self._step_s = Histogram("fastswitch_worker_step_seconds", "Step time", registry=registry)
        self._live = Gauge("fastswitch_worker_live_seqs", "Sequences resident", registry=registry)
        self._copy_s = Counter(
            "fastswitch_worker_swap_copy_seconds",
            "Time the swap engine spent copying (async: on its own thread, beside the steps)",
            registry=registry,
        )
        self._wait_s = Counter(
            "fastswitch_worker_swap_wait_seconds",
            "Time steps spent on swaps before their forward (sync: the copies; async: submitting)",
            registry=registry,
        )
        self._copied = 0.0  # the part of the swap engine's copy_seconds already counted

    def on_step(self, result: StepResult) -> None:
        executor = self._executor
        self._steps.inc()
        self._step_s.observe(result.timing.step_s)
        self._live.set(executor.engine.num_seqs)
        self._wait_s.inc(result.timing.swap_wait_s)
        if executor.swaps is not None:
            self._copy_s.inc(executor.swaps.copy_seconds - self._copied)
            self._copied = executor.swaps.copy_seconds


def stats_snapshot(
    worker_id: str, executor: StepExecutor, pool: DevicePool, telemetry: Telemetry
) -> WorkerStats:
    """The worker's counters and, where there is a GPU, its telemetry, read now."""
    return WorkerStats(
        worker_id=worker_id,
        device=str(pool.pool.device),
        num_blocks=pool.pool.num_blocks,
        live_seqs=executor.engine.num_seqs,
        steps=executor.steps,
        swap_out_bytes=executor.swap_out_bytes,
        swap_in_bytes=executor.swap_in_bytes,
        gpu=telemetry.read(),
        gpu_unavailable=telemetry.unavailable,
    )
