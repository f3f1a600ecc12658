"""Preemption by quantum (``scheduler_svc.policy``, "Preemption by quantum"): a waiting request
preempts only when its tenant trails the victim's by more than the quantum, only for the room
it lacks, and the cheapest victim to switch goes first; the gap between backlogged tenants stays
within VTC's bound whatever the quantum."""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import FakeHost, FakeWorker, step
from test_vtc import W_OUTPUT, W_PROMPT, Live, RecordingVtc, keep_backlogged

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.policy import make_policy
from scheduler_svc.request import GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo


def setup(policy, *, quantum, blocks=256, bs=4, max_num_seqs=4):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(
            max_num_seqs=max_num_seqs,
            max_batched_tokens=64,
            preempt_margin=quantum,
            priority_update_interval=1,
            preemption="swap",
            min_swap_tokens=1,
        ),
        policy,
        eos_token_ids=[255],
        clock=lambda: next(clock) * 1e-3,
    )
    info = WorkerInfo("w0", num_blocks=blocks, block_size=bs, block_bytes=1, max_model_len=4096)
    core.add_worker(info)
    return core, FakeWorker(info, FakeHost())


def gaps_at_preemptions(quantum: float) -> tuple[list[float], int]:
    """Two tenants, the second arriving late behind a full batch of long requests: the
    counter gap before every step that preempted, and how many preemptions there were."""
    policy = RecordingVtc()
    core, worker = setup(policy, quantum=quantum)
    live = Live()
    gaps = []
    for i in range(900):
        keep_backlogged(core, "early", live, prompt=8, out=64)
        if i >= 40:
            keep_backlogged(core, "late", live, prompt=8, out=64)
        gap = abs(policy.counter("early") - policy.counter("late")) if i >= 40 else 0.0
        before = core.counters.preemptions
        step(core, "w0", worker)
        if core.counters.preemptions > before:
            gaps.append(gap)
    return gaps, core.counters.preemptions


def test_no_preemption_while_the_gap_is_within_the_quantum():
    quantum = 300.0
    gaps, preemptions = gaps_at_preemptions(quantum)
    assert preemptions > 0, "the workload never needed a preemption: the test proves nothing"
    assert min(gaps) > quantum, sorted(gaps)[:5]
    # The same workload without a quantum preempts at gaps the quantum would have let be, so
    # this test fails for a rule that ignores the quantum.
    unbounded, more = gaps_at_preemptions(0.0)
    assert any(g <= quantum for g in unbounded) and more > preemptions


@pytest.mark.parametrize("quantum", [0.0, 64.0, 512.0, CoreConfig().preempt_margin])
def test_the_gap_between_backlogged_tenants_stays_within_vtc_s_bound(quantum):
    policy = RecordingVtc()
    core, worker = setup(policy, quantum=quantum, blocks=64)
    live = Live()
    l_input = 40
    bound = 2 * max(W_PROMPT * l_input, W_OUTPUT * 64 * 4)  # M: the worker's KV in tokens
    worst = 0.0
    for _ in range(1500):
        keep_backlogged(core, "long-prompts", live, prompt=l_input, out=8)
        keep_backlogged(core, "long-outputs", live, prompt=4, out=32)
        step(core, "w0", worker)
        s = policy.service
        worst = max(worst, abs(s.get("long-prompts", 0) - s.get("long-outputs", 0)))
    assert worst <= bound, (worst, bound)
    assert sum(policy.service.values()) > 10 * bound


def submit(core: SchedulerCore, tenant: str, prompt: int, out: int) -> Request:
    return core.submit(
        prompt_ids=[(7 * i) % 200 for i in range(prompt)],
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=out),
        tenant=tenant,
    )


def preempted_for_a_light_request(heavy: list[tuple[int, int]]) -> list[Request]:
    """A full batch of `heavy` (prompt, max_tokens) requests decoding, then one light request:
    the heavy requests preempted for it."""
    core, worker = setup(make_policy("vtc"), quantum=0.0, max_num_seqs=len(heavy))
    reqs = [submit(core, "heavy", p, o) for p, o in heavy]
    while not all(r.decode_ready for r in reqs):
        step(core, "w0", worker)
    light = submit(core, "light", 8, 4)
    while light.num_computed == 0:
        step(core, "w0", worker)
    return [r for r in reqs if r.preemptions]


def test_the_victim_is_the_cheapest_to_switch_not_the_lowest_ranked():
    # VTC ranks a tenant's requests by arrival: the last (40 tokens) is the lowest ranked, but
    # the first (8 tokens, 3 blocks with its first output) moves the fewest blocks.
    victims = preempted_for_a_light_request([(8, 50), (40, 50), (20, 50)])
    assert [len(v.prompt_ids) for v in victims] == [8]


def test_among_equal_switch_costs_the_request_with_more_tokens_left_goes():
    # Same blocks; the one about to finish keeps its slot (it frees it soon without a switch).
    victims = preempted_for_a_light_request([(16, 60), (16, 6), (16, 30)])
    assert [v.limits.max_tokens for v in victims] == [60]
