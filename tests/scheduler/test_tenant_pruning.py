"""Idle tenants leave the live table and the stats; the number of tenants in it is bounded; VTC
keeps what its lift rule needs of a pruned tenant (its counter), through the real core."""

from __future__ import annotations

import pytest
from sched_fakes import FakeWorker, drive

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.errors import ResourceExhausted
from scheduler_svc.policy import VtcPolicy
from scheduler_svc.request import GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def setup(**cfg) -> tuple[SchedulerCore, FakeWorker, Clock, VtcPolicy]:
    clock = Clock()
    policy = VtcPolicy()
    core = SchedulerCore(CoreConfig(**cfg), policy, eos_token_ids=[255], clock=clock)
    info = WorkerInfo("w0", num_blocks=64, block_size=4, block_bytes=1, max_model_len=4096)
    core.add_worker(info)
    return core, FakeWorker(info), clock, policy


def submit(core: SchedulerCore, tenant: str, n_out: int = 3) -> Request:
    return core.submit(
        prompt_ids=[1, 2, 3, 4, 5],
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=n_out, ignore_eos=True),
        tenant=tenant,
    )


def run(core: SchedulerCore, worker: FakeWorker) -> None:
    drive(core, {"w0": worker})
    for req in list(core._table):  # the streams close: finished requests are forgotten
        core.forget(req.request_id)


def listed(core: SchedulerCore) -> list[str]:
    return [t.tenant for t in core.stats().tenants]


def test_a_tenant_idle_for_the_set_time_leaves_the_table_and_the_stats():
    core, worker, clock, policy = setup(tenant_idle_s=60.0)
    for tenant in ("a", "b"):
        submit(core, tenant)
    run(core, worker)
    served = policy.counter("a")
    assert listed(core) == ["a", "b"] and served > 0
    clock.now = 30.0
    submit(core, "b")  # b is active again, a stays idle
    clock.now = 59.0
    assert listed(core) == ["a", "b"]
    clock.now = 61.0
    assert listed(core) == ["b"]  # a: idle for 61 s; b has a waiting request
    run(core, worker)
    clock.now = 200.0
    assert listed(core) == [] and core.tallies == {}
    core.check_integrity()
    # The counter is kept (one float per pruned tenant) and the tenant may come back.
    assert policy.counter("a") == served and policy.num_counters == 2
    submit(core, "a")
    assert listed(core) == ["a"]
    assert core.stats().tenants[0].virtual_counter == served
    core.check_integrity()


def test_a_pruned_heavy_tenant_earns_no_credit_by_idling():
    """VTC's lift rule needs the pruned counter: a heavy tenant that returns while a light one
    is active keeps its own (higher) counter, so the light one still goes first."""
    core, worker, clock, policy = setup(tenant_idle_s=10.0)
    submit(core, "heavy", n_out=40)
    run(core, worker)
    heavy = policy.counter("heavy")
    clock.now = 100.0
    assert listed(core) == []  # pruned
    light = submit(core, "light", n_out=1)
    back = submit(core, "heavy", n_out=1)
    assert policy.counter("heavy") == heavy > policy.counter("light")
    assert policy.sort_key(light) < policy.sort_key(back)


def test_a_tenant_never_served_leaves_no_counter():
    core, _, clock, policy = setup(tenant_idle_s=1.0)
    req = submit(core, "ghost")
    core.cancel(req.request_id)  # cancelled before it was ever scheduled
    core.forget(req.request_id)
    clock.now = 5.0
    assert listed(core) == [] and policy.num_counters == 0


def test_the_table_holds_at_most_max_tenants_and_idle_ones_make_room():
    core, worker, clock, _ = setup(max_tenants=3, tenant_idle_s=3600.0)
    for tenant in ("a", "b", "c"):
        submit(core, tenant)
    with pytest.raises(ResourceExhausted) as err:
        submit(core, "d" * 60)
    assert str(err.value) == "too many tenants with live requests (at most 3)"
    submit(core, "a")  # a known tenant is always fine
    run(core, worker)
    clock.now = 1.0
    submit(core, "d")  # every tenant is idle now: the longest idle one makes room
    assert len(core.tallies) == 3 and "d" in core.tallies
    core.check_integrity()


def test_five_thousand_made_up_tenants_do_not_grow_the_stats():
    core, worker, clock, _ = setup(max_tenants=64, tenant_idle_s=60.0)
    for i in range(5000):
        clock.now = i * 0.01
        submit(core, f"t{i}", n_out=1)
        if i % 50 == 49:
            run(core, worker)
    run(core, worker)
    assert len(core.stats().tenants) <= 64
    clock.now += 61.0
    assert core.stats().tenants == ()
    core.check_integrity()
