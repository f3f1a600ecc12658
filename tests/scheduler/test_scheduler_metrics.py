"""SchedulerMetrics fed by a real core (fake worker and host, sched_fakes.py) on a fake clock:
finished requests bump the counters and histograms with their own labels, preemptions are
counted by kind, and the tenant label is capped."""

from __future__ import annotations

import itertools

from prometheus_client import CollectorRegistry
from sched_fakes import FakeHost, FakeWorker

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.fetch_cost import DeviceCosts
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.policy import make_policy
from scheduler_svc.request import GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo
from servekit.labels import OTHER

MODEL = "tiny-test"


def make(registry: CollectorRegistry, *, blocks: int = 64, device_cache=False, **metrics_kw):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(
            preemption="swap",
            min_swap_tokens=1,
            preempt_margin=0,
            priority_update_interval=1,
            device_prefix_cache=device_cache,
        ),
        make_policy("vtc", tenant_weights={"vip": 2.0}),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,  # every reading 1 ms later
    )
    info = WorkerInfo("w0", num_blocks=blocks, block_size=4, block_bytes=100, max_model_len=4096)
    core.add_worker(info)
    metrics = SchedulerMetrics(registry, core, model=MODEL, **metrics_kw)
    return core, FakeWorker(info, FakeHost()), metrics


def submit(core: SchedulerCore, i: int, tenant: str, out: int = 12) -> Request:
    return core.submit(
        prompt_ids=[(i * 37 + j * 11) % 200 for j in range(6 + i % 5)],
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=out),
        tenant=tenant,
    )


def drive(core: SchedulerCore, worker: FakeWorker, metrics: SchedulerMetrics) -> None:
    """Like sched_fakes.drive, with the frontend's hooks: on_step after every step, on_finish
    for each request once it has ended (its stream closed)."""
    for _ in range(20_000):
        served = worker.host.serve(core)
        plan = core.schedule("w0")
        served += worker.host.serve(core)
        if plan is None:
            if not served:
                return
            continue
        out = worker.run(plan)
        for event in core.update_from_output("w0", out):
            if event.finished:
                metrics.on_finish(event.request)
        worker.host.serve(core)
        metrics.on_step("w0", plan, out)
    raise AssertionError("did not drain")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model": MODEL, **labels})


def test_finished_requests_feed_counters_and_histograms_per_tenant():
    registry = CollectorRegistry()
    core, worker, metrics = make(registry, blocks=14)  # tight: a preemption storm by swap
    reqs = [submit(core, i, ("a", "b", "c")[i % 3]) for i in range(8)]
    drive(core, worker, metrics)
    assert all(r.is_finished for r in reqs)
    for tenant in ("a", "b", "c"):
        mine = [r for r in reqs if r.tenant == tenant]
        t = {"tenant": tenant}
        assert value(registry, "fastswitch_requests_total", **t, finish_reason="length") == len(
            mine
        )
        prompt = sum(len(r.prompt_ids) for r in mine)
        assert value(registry, "fastswitch_prompt_tokens_total", **t) == prompt
        generated = sum(len(r.output_ids) for r in mine)
        assert value(registry, "fastswitch_generation_tokens_total", **t) == generated
        ttft = sum(r.token_times[0] - r.arrival_s for r in mine)
        name = "fastswitch_time_to_first_token_seconds"
        assert value(registry, f"{name}_count", **t) == len(mine)
        assert abs(value(registry, f"{name}_sum", **t) - ttft) < 1e-9
        gaps = sum(len(r.token_times) - 1 for r in mine)
        assert value(registry, "fastswitch_inter_token_latency_seconds_count", **t) == gaps
        e2e = sum(r.finished_s - r.arrival_s for r in mine)
        assert abs(value(registry, "fastswitch_e2e_request_latency_seconds_sum", **t) - e2e) < 1e-9
        queued = sum(r.first_scheduled_s - r.arrival_s for r in mine)
        assert abs(value(registry, "fastswitch_queue_time_seconds_sum", **t) - queued) < 1e-9
    c = core.counters
    assert c.swap_preemptions > 0, "the storm preempted nothing"
    assert value(registry, "fastswitch_preemptions_total", kind="swap") == c.swap_preemptions
    assert value(registry, "fastswitch_preemptions_total", kind="recompute") == 0
    for gauge in ("waiting", "running", "swapped"):
        assert value(registry, f"fastswitch_requests_{gauge}") == 0
    # The VTC counters the policy keeps, per tenant, at scrape time.
    for tenant in ("a", "b", "c"):
        vtc = value(registry, "fastswitch_tenant_virtual_counter", tenant=tenant)
        assert vtc == core.policy.counter(tenant) and vtc > 0
        assert value(registry, "fastswitch_tenant_weight", tenant=tenant) == 1.0


def test_device_hits_and_evictions_are_counted_in_the_device_tier():
    registry = CollectorRegistry()
    core, worker, metrics = make(registry, blocks=12, device_cache=True)
    system = [(5 * j) % 200 for j in range(17)]  # 4 full blocks
    reqs = []
    for i in range(6):
        reqs.append(
            core.submit(
                prompt_ids=[*system, i, i + 1],
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=8),
                tenant="a",
            )
        )
        drive(core, worker, metrics)  # one after another: each later one hits the device
    device = sum(r.device_cached_tokens for r in reqs)
    assert device == 5 * 16 and all(r.cached_prompt_tokens == r.device_cached_tokens for r in reqs)
    t = {"tenant": "a"}
    assert value(registry, "fastswitch_cached_prompt_tokens_total", **t, tier="device") == device
    assert value(registry, "fastswitch_cached_prompt_tokens_total", **t, tier="host") == 0
    evicted = core.counters.device_evicted_blocks
    assert evicted > 0, "12 blocks hold no 6 requests' chains: something must be evicted"
    assert value(registry, "fastswitch_cache_evictions_total", tier="device") == evicted


def test_swap_bytes_and_gauges_follow_the_steps():
    registry = CollectorRegistry()
    core, worker, metrics = make(registry)
    submit(core, 0, "a")
    submit(core, 1, "a")
    plan = core.schedule("w0")
    assert plan is not None
    out = worker.run(plan)
    core.update_from_output("w0", out)
    metrics.on_step("w0", plan, StepOutput(plan.step_id, {}, swap_out_bytes=300, swap_in_bytes=7))
    metrics.on_step("w0", plan, StepOutput(plan.step_id, {}, swap_out_bytes=100))
    assert value(registry, "fastswitch_swap_bytes_total", direction="out") == 400
    assert value(registry, "fastswitch_swap_bytes_total", direction="in") == 7
    assert value(registry, "fastswitch_requests_running") == 2
    assert value(registry, "fastswitch_requests_waiting") == 0


def test_plan_shapes_and_scheduling_time_are_counted():
    """Per plan: one plan, compute or not, its sequences, prefill and decode tokens; the core's
    time in schedule/update_from_output, by difference. Two requests (6 and 7 prompt tokens,
    12 outputs each) drained: 13 prompt tokens prefilled, 2 x 11 decodes."""
    registry = CollectorRegistry()
    core, worker, metrics = make(registry)
    submit(core, 0, "a")
    submit(core, 1, "b")
    drive(core, worker, metrics)
    plans = value(registry, "fastswitch_scheduler_plans_total")
    compute = value(registry, "fastswitch_scheduler_compute_plans_total")
    assert plans is not None and compute is not None and 0 < compute <= plans
    assert value(registry, "fastswitch_scheduler_planned_prefill_tokens_total") == 13
    assert value(registry, "fastswitch_scheduler_planned_decode_tokens_total") == 22
    assert value(registry, "fastswitch_scheduler_planned_seqs_total") == 2 + 22
    metrics.refresh()  # the last, empty schedule() came after the last step
    seconds = value(registry, "fastswitch_scheduler_schedule_seconds_total")
    assert seconds is not None and 0 < seconds == core.counters.schedule_s
    # A plan that only moves KV counts as a plan, not as compute.
    empty = StepPlan(step_id=99, drop=[12345])
    metrics.on_step("w0", empty, StepOutput(99, {}))
    assert value(registry, "fastswitch_scheduler_plans_total") == plans + 1
    assert value(registry, "fastswitch_scheduler_compute_plans_total") == compute


def test_tenant_labels_are_capped_and_configured_tenants_keep_theirs():
    registry = CollectorRegistry()
    core, worker, metrics = make(registry, max_tenants=2, tenants=("vip",))
    reqs = [submit(core, i, t, out=3) for i, t in enumerate(["x", "y", "z", "y", "vip"])]
    drive(core, worker, metrics)
    assert all(r.is_finished for r in reqs)
    assert metrics.tenants.named() == ("vip", "x")  # vip configured, x the first one seen
    ended = "fastswitch_requests_total"
    assert value(registry, ended, tenant="vip", finish_reason="length") == 1
    assert value(registry, ended, tenant="x", finish_reason="length") == 1
    assert value(registry, ended, tenant=OTHER, finish_reason="length") == 3  # y, z, y
    assert value(registry, ended, tenant="y", finish_reason="length") is None
    other = sum(len(r.output_ids) for r in reqs if r.tenant in ("y", "z"))
    assert value(registry, "fastswitch_generation_tokens_total", tenant=OTHER) == other
    # Gauges only for tenants with their own label: a counter of "_other" would mean nothing.
    assert value(registry, "fastswitch_tenant_weight", tenant="vip") == 2.0
    assert value(registry, "fastswitch_tenant_virtual_counter", tenant=OTHER) is None
    tenants = {
        s.labels["tenant"]
        for family in registry.collect()
        for s in family.samples
        if "tenant" in s.labels
    }
    assert tenants == {"vip", "x", OTHER}


def test_store_losses_are_exported_as_they_happen():
    """A store loss happens between steps (the host agent sees it): the counter is read from
    the core at scrape time, so it shows with no step or finished request after it."""
    registry = CollectorRegistry()
    core, _, _ = make(registry)
    assert value(registry, "fastswitch_store_losses_total") == 0
    core.on_store_lost()
    core.on_store_lost()
    assert value(registry, "fastswitch_store_losses_total") == 2


def test_locality_placements_deferrals_and_fallbacks_are_exported_by_kind():
    registry = CollectorRegistry()
    core, _worker, metrics = make(registry, device_cache=True)
    assert value(registry, "fastswitch_scheduler_locality_total", kind="placement") == 0
    core.counters.locality_placements += 3  # as placement counts them (tests/scheduler/
    core.counters.locality_deferrals += 5  # test_placement.py drives the real ones)
    core.counters.locality_fallbacks += 2
    metrics.refresh()
    metrics.refresh()  # counted once
    assert value(registry, "fastswitch_scheduler_locality_total", kind="placement") == 3
    assert value(registry, "fastswitch_scheduler_locality_total", kind="deferral") == 5
    assert value(registry, "fastswitch_scheduler_locality_total", kind="fallback") == 2


def test_fetch_costs_and_declined_hits_are_exported():
    """What fetch-or-compute weighs, read at scrape time: each worker's measured costs, the
    store's round trip, and the host hits it declined."""
    registry = CollectorRegistry()
    core, _, _ = make(registry)
    costs = DeviceCosts(prefill_tokens_per_s=1e6, copy_latency_s=5e-5, copy_bytes_per_s=2e9)
    core.add_worker(
        WorkerInfo("w1", num_blocks=8, block_size=4, block_bytes=100, max_model_len=64, costs=costs)
    )
    assert value(registry, "fastswitch_fetch_cost_prefill_tokens_per_second", worker="w0") == 0
    assert value(registry, "fastswitch_fetch_cost_prefill_tokens_per_second", worker="w1") == 1e6
    assert value(registry, "fastswitch_fetch_cost_copy_latency_seconds", worker="w1") == 5e-5
    assert value(registry, "fastswitch_fetch_cost_copy_bytes_per_second", worker="w1") == 2e9
    core.note_store_round_trip(0.004)
    assert value(registry, "fastswitch_store_round_trip_seconds") == 0.004
    assert value(registry, "fastswitch_host_hits_declined_total") == 0
    core.counters.host_hits_declined += 3
    assert value(registry, "fastswitch_host_hits_declined_total") == 3
