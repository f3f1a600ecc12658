"""Prometheus metrics of the scheduler, registered on the service's own registry."""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scheduler_svc.core import SchedulerCore
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.request import Request

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fastswitch_requests", "Requests ended, by outcome", ["outcome"], registry=registry
        )
        self.waiting = Gauge("fastswitch_waiting_requests", "Queued requests", registry=registry)
        self.running = Gauge("fastswitch_running_requests", "Running requests", registry=registry)
        self.swapped = Gauge(
            "fastswitch_swapped_requests", "Requests swapped out to host", registry=registry
        )
        self.preemptions = Gauge(
            "fastswitch_preemptions", "Preemptions since start", registry=registry
        )
        self.ttft = Histogram(
            "fastswitch_ttft_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tbt = Histogram(
            "fastswitch_tbt_seconds",
            "Time between tokens",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.step = Histogram(
            "fastswitch_step_seconds",
            "Worker step time",
            ["worker"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.blocks_used = Gauge(
            "fastswitch_kv_blocks_used", "Device KV blocks in use", ["worker"], registry=registry
        )
        self.blocks_free = Gauge(
            "fastswitch_kv_blocks_free", "Device KV blocks free", ["worker"], registry=registry
        )

    def on_step(self, core: SchedulerCore, worker_id: str, plan: StepPlan, out: StepOutput) -> None:
        self.step.labels(worker_id).observe(out.step_s)
        slot = core.workers.get(worker_id)
        if slot is not None:
            self.blocks_used.labels(worker_id).set(slot.allocator.num_used)
            self.blocks_free.labels(worker_id).set(slot.allocator.num_free)
        self.waiting.set(core.num_waiting())
        self.running.set(core.num_running())
        self.swapped.set(core.num_swapped())
        self.preemptions.set(core.counters.preemptions)

    def on_finish(self, req: Request) -> None:
        outcome = req.finish_reason.value if req.finish_reason is not None else "unknown"
        self.requests.labels(outcome).inc()
        times = req.token_times
        if times:
            self.ttft.observe(times[0] - req.arrival_s)
            for a, b in itertools.pairwise(times):
                self.tbt.observe(b - a)
