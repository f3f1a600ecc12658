"""VTC fairness (Sheng et al., OSDI'24) through the real scheduler core and a fake worker."""

from __future__ import annotations

import itertools

from sched_fakes import FakeWorker, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.policy import VtcPolicy
from scheduler_svc.request import GenerationLimits, Sampling
from scheduler_svc.workers import WorkerInfo

W_PROMPT, W_OUTPUT = 1.0, 2.0


class RecordingVtc(VtcPolicy):
    """VTC that also records the raw weighted service each tenant received (no lifts)."""

    def __init__(self, **kw):
        super().__init__(w_prompt=W_PROMPT, w_output=W_OUTPUT, **kw)
        self.service: dict[str, float] = {}

    def on_served(self, tenant, prompt_tokens, output_tokens):
        super().on_served(tenant, prompt_tokens, output_tokens)
        cost = prompt_tokens * W_PROMPT + output_tokens * W_OUTPUT
        self.service[tenant] = self.service.get(tenant, 0.0) + cost


def setup(policy, *, blocks=64, bs=4, **cfg):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(
            max_num_seqs=4,
            max_batched_tokens=64,
            preempt_margin=0,
            priority_update_interval=1,
            **cfg,
        ),
        policy,
        eos_token_ids=[255],
        clock=lambda: next(clock) * 1e-3,
    )
    info = WorkerInfo("w0", num_blocks=blocks, block_size=bs, block_bytes=1, max_model_len=4096)
    core.add_worker(info)
    return core, FakeWorker(info)


class Live(dict):
    """tenant -> its unfinished requests, and how many requests were submitted in all."""

    submitted = 0


def keep_backlogged(core, tenant, live: Live, prompt, out, depth=6):
    live[tenant] = [r for r in live.get(tenant, []) if not r.is_finished]
    while len(live[tenant]) < depth:
        n = live.submitted
        live.submitted += 1
        live[tenant].append(
            core.submit(
                prompt_ids=[(n * 13 + i) % 200 for i in range(prompt)],
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=out),
                tenant=tenant,
            )
        )


def test_two_backlogged_tenants_stay_within_the_vtc_bound():
    policy = RecordingVtc()
    core, worker = setup(policy)
    live = Live()
    l_input, out = 40, 8
    capacity = 64 * 4  # M: tokens the worker's KV holds
    bound = 2 * max(W_PROMPT * l_input, W_OUTPUT * capacity)
    worst = 0.0
    for _ in range(1500):
        keep_backlogged(core, "long-prompts", live, prompt=l_input, out=out)
        keep_backlogged(core, "long-outputs", live, prompt=4, out=32)
        step(core, "w0", worker)
        s = policy.service
        worst = max(worst, abs(s.get("long-prompts", 0) - s.get("long-outputs", 0)))
    assert worst <= bound, (worst, bound)
    total = sum(policy.service.values())
    assert total > 10 * bound  # a long run, not a trivially short one
    # Much tighter than the bound in practice: within 10% of all service given.
    assert worst < 0.1 * total


def test_weights_share_service_in_proportion():
    policy = RecordingVtc(tenant_weights={"gold": 2.0, "basic": 1.0})
    core, worker = setup(policy)
    live = Live()
    for _ in range(1500):
        keep_backlogged(core, "gold", live, prompt=8, out=16)
        keep_backlogged(core, "basic", live, prompt=8, out=16)
        step(core, "w0", worker)
    ratio = policy.service["gold"] / policy.service["basic"]
    assert 1.8 < ratio < 2.2, ratio


def test_a_tenant_becoming_active_is_lifted_not_credited_for_idling():
    policy = RecordingVtc()
    core, worker = setup(policy)
    live = Live()
    for _ in range(300):
        keep_backlogged(core, "early", live, prompt=8, out=16)
        step(core, "w0", worker)
    early_counter = policy.counter("early")
    assert early_counter > 1000
    keep_backlogged(core, "late", live, prompt=8, out=16)
    # Lifted to the smallest counter among active tenants: idling earned nothing.
    assert policy.counter("late") == early_counter
    before = dict(policy.service)
    for _ in range(600):
        keep_backlogged(core, "early", live, prompt=8, out=16)
        keep_backlogged(core, "late", live, prompt=8, out=16)
        step(core, "w0", worker)
    gained = {t: policy.service[t] - before.get(t, 0) for t in ("early", "late")}
    assert 0.8 < gained["late"] / gained["early"] < 1.25, gained


def test_fcfs_lets_a_heavy_tenant_starve_a_light_one_where_vtc_does_not():
    """The reason VTC exists: under FCFS, the tenant that floods the queue gets the service."""
    results = {}
    for name in ("fcfs", "vtc"):
        from scheduler_svc.policy import make_policy

        policy = make_policy(name)
        core, worker = setup(policy)
        flood = [
            core.submit(
                prompt_ids=[1] * 8,
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=16),
                tenant="heavy",
            )
            for _ in range(40)
        ]
        light = core.submit(
            prompt_ids=[2] * 8,
            sampling=Sampling(),
            limits=GenerationLimits(max_tokens=16),
            tenant="light",
        )
        steps = 0
        while not light.is_finished:
            step(core, "w0", worker)
            steps += 1
        results[name] = steps
        assert any(not r.is_finished for r in flood) or name == "fcfs"
    assert results["vtc"] * 3 < results["fcfs"], results
