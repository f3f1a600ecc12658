"""The worker's metrics: Prometheus counters updated after every step, and the stats snapshot
that ``GetWorkerStats`` answers with."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker_svc.device_pool import DevicePool
from worker_svc.executor import StepExecutor
from worker_svc.plan import StepResult
from worker_svc.swap_engine import Direction, SwapDone
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


# Seconds: a step or a forward from well under a millisecond (tiny model) to seconds.
STEP_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0),
)
# Seconds of one swap's copies: a block run over PCIe takes microseconds to tens of ms.
COPY_BUCKETS = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    *(0.5, 1.0, 2.5, 5.0),
)
DIRECTIONS = (Direction.OUT, Direction.IN)


class StepMetrics:
    """Prometheus view of the steps and swaps, in ``registry``, labelled with ``model`` and
    ``worker`` (docs/metrics.md). ``on_step`` runs on the event loop after each step's result
    is sent, with the swaps that step found finished (each is seen exactly once)."""

    def __init__(
        self, registry: CollectorRegistry, executor: StepExecutor, *, model: str, worker: str
    ) -> None:
        self._executor = executor
        mw, mwd = ["model", "worker"], ["model", "worker", "direction"]
        lv = (model, worker)
        self._steps = Counter(
            "fastswitch_worker_steps", "Steps executed", mw, registry=registry
        ).labels(*lv)
        self._step_s = Histogram(
            "fastswitch_worker_step_seconds",
            "Plan received to result sent",
            mw,
            buckets=STEP_BUCKETS,
            registry=registry,
        ).labels(*lv)
        self._forward_s = Histogram(
            "fastswitch_worker_forward_seconds",
            "The step's one forward (prefills and decodes)",
            mw,
            buckets=STEP_BUCKETS,
            registry=registry,
        ).labels(*lv)
        self._live = Gauge(
            "fastswitch_worker_live_seqs", "Sequences resident", mw, registry=registry
        ).labels(*lv)
        self._blocks = Gauge(
            "fastswitch_worker_kv_blocks_capacity",
            "Blocks of the device KV pool",
            mw,
            registry=registry,
        ).labels(*lv)
        self._blocks_free = Gauge(
            "fastswitch_worker_kv_blocks_free",
            "Device KV blocks in no resident sequence's block table",
            mw,
            registry=registry,
        ).labels(*lv)
        self._wait_s = Counter(
            "fastswitch_worker_swap_wait_seconds",
            "Time steps spent on swaps before their forward (sync: the copies; async: submitting)",
            mw,
            registry=registry,
        ).labels(*lv)
        copy_s = Histogram(
            "fastswitch_worker_swap_copy_seconds",
            "Copy time of one swap (async: on the swap engine's thread or CUDA stream)",
            mwd,
            buckets=COPY_BUCKETS,
            registry=registry,
        )
        swap_bytes = Counter(
            "fastswitch_worker_swap_bytes", "KV bytes swapped", mwd, registry=registry
        )
        copies = Counter(
            "fastswitch_worker_swap_copies",
            "Copy calls the swaps made (per-layer: blocks x layers x 2; group: one per run)",
            mwd,
            registry=registry,
        )
        self._swaps = {
            d: (
                copy_s.labels(*lv, d.value),
                swap_bytes.labels(*lv, d.value),
                copies.labels(*lv, d.value),
            )
            for d in DIRECTIONS
        }
        self._blocks.set(executor.engine.pool.num_blocks)
        self._blocks_free.set(executor.engine.pool.num_blocks)

    def on_step(self, result: StepResult, swaps: tuple[SwapDone, ...] = ()) -> None:
        engine = self._executor.engine
        self._steps.inc()
        self._step_s.observe(result.timing.step_s)
        self._forward_s.observe(result.timing.forward_s)
        self._live.set(engine.num_seqs)
        self._blocks_free.set(engine.pool.num_blocks - engine.num_blocks_held)
        if result.timing.swap_wait_s:
            self._wait_s.inc(result.timing.swap_wait_s)
        for job in swaps:
            seconds, nbytes, copies = self._swaps[job.direction]
            seconds.observe(job.seconds)
            nbytes.inc(job.nbytes)
            copies.inc(job.copies)


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
