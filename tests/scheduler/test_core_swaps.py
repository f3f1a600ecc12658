"""Context switching in the scheduler core: swap-out/in through a fake host store and a fake
worker whose KV lives only in its blocks (sched_fakes.py), under preemption storms."""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import FakeHost, FakeWorker, drive, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.policy import make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Sampling, Status
from scheduler_svc.workers import WorkerInfo

EOS = 255


def make(policy="vtc", blocks=64, bs=4, workers=("w0",), swap_delay=1, host=None, **cfg):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(**{"preemption": "swap", "min_swap_tokens": 1, **cfg}),
        make_policy(policy),
        eos_token_ids=[EOS],
        clock=lambda: next(clock) * 0.001,
    )
    host = host or FakeHost()
    fakes = {}
    for wid in workers:
        info = WorkerInfo(
            wid, num_blocks=blocks, block_size=bs, block_bytes=100, max_model_len=4096
        )
        core.add_worker(info)
        fakes[wid] = FakeWorker(info, host, swap_delay=swap_delay)
    return core, fakes


def submit_all(core, n=8, prompt=6, out=12, tenants=("a", "b", "c")):
    reqs = []
    for i in range(n):
        ids = [(i * 37 + j * 11) % 200 for j in range(prompt + i % 5)]
        reqs.append(
            core.submit(
                prompt_ids=ids,
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=out),
                tenant=tenants[i % len(tenants)],
            )
        )
    return reqs


def reference(n=8, prompt=6, out=12):
    core, fakes = make(preemption="recompute", blocks=4096, policy="fcfs")
    reqs = submit_all(core, n, prompt, out)
    drive(core, fakes)
    return [list(r.output_ids) for r in reqs]


@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("swap_delay", [1, 3])
@pytest.mark.parametrize("policy", ["vtc", "fcfs", "priority"])
def test_preemption_storm_by_swap_gives_identical_tokens(policy, swap_delay, retain):
    core, fakes = make(
        policy=policy,
        blocks=14,
        swap_delay=swap_delay,
        preempt_margin=0,
        priority_update_interval=1,
        retain=retain,
    )
    reqs = submit_all(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)
    assert core.counters.swap_outs > 0 and core.counters.swap_ins > 0
    assert core.workers["w0"].allocator.num_free == 14
    host = fakes["w0"].host
    assert not host.reserved and not host.leases, "host memory leaked"
    # Only content-addressed (retained) blocks may stay; private copies are all freed.
    assert host.committed == set(host.hash_of), "private host blocks leaked"
    assert retain or not host.committed


def test_swapped_requests_resume_on_another_worker():
    core, fakes = make(
        blocks=10, workers=("w0", "w1"), preempt_margin=0, priority_update_interval=1
    )
    reqs = submit_all(core, n=10, out=16)
    drive(core, fakes)
    moved = [r for r in reqs if r.swap_ins and r.worker_id is None]
    assert core.counters.swap_ins > 0
    assert [list(r.output_ids) for r in reqs] == reference(n=10, out=16)
    assert moved or core.counters.swap_ins > 0


def test_kv_reuse_copies_only_new_blocks_on_the_second_swap_out():
    core, fakes = make(policy="priority", blocks=16, bs=4, max_num_seqs=1)
    w = fakes["w0"]
    low = core.submit(
        prompt_ids=list(range(16)),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=40),
        priority=0,
    )
    for _ in range(3):
        step(core, "w0", w)

    def preempt_once():
        hi = core.submit(
            prompt_ids=list(range(20)),
            sampling=Sampling(),
            limits=GenerationLimits(max_tokens=2),
            priority=5,
        )
        before = w.blocks_copied_out
        while not hi.is_finished:
            step(core, "w0", w)
        return w.blocks_copied_out - before, low.num_computed

    first, computed1 = preempt_once()
    # Let `low` come back and decode into a new block, then preempt it again.
    while low.num_computed < computed1 + 8 and not low.is_finished:
        step(core, "w0", w)
    second, computed2 = preempt_once()
    assert low.swap_outs == 2
    assert first == -(-computed1 // 4)
    # Only blocks the host lacks: the full blocks of the first copy are reused.
    assert second == -(-computed2 // 4) - computed1 // 4
    assert core.counters.swap_bytes_avoided == (computed1 // 4) * 100
    drive(core, fakes)
    assert low.finish_reason is FinishReason.LENGTH


def test_no_kv_reuse_copies_everything_again():
    core, fakes = make(blocks=14, kv_reuse=False, preempt_margin=0, priority_update_interval=1)
    reqs = submit_all(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert core.counters.swap_bytes_avoided == 0


def _low_then_high(swap_delay):
    core, fakes = make(
        policy="priority",
        blocks=16,
        bs=4,
        swap_delay=swap_delay,
        max_num_seqs=1,
        priority_update_interval=1,
    )
    w = fakes["w0"]
    low = core.submit(
        prompt_ids=list(range(20)),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=30),
        priority=0,
        request_id="low",
    )
    step(core, "w0", w)
    hi = core.submit(
        prompt_ids=list(range(12)),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=4),
        priority=9,
        request_id="hi",
    )
    for _ in range(10):
        step(core, "w0", w)
        if low.status == Status.SWAPPING_OUT and low.swap_sent:
            break
    assert low.status == Status.SWAPPING_OUT and low.swap_sent
    return core, fakes, w, low, hi


def test_device_blocks_stay_until_the_swap_out_is_reported_done():
    core, fakes, w, low, hi = _low_then_high(swap_delay=4)
    held = core.workers["w0"].allocator.num_blocks_of(low.seq)
    steps_swapping = 0
    while low.status == Status.SWAPPING_OUT:
        assert core.workers["w0"].allocator.num_blocks_of(low.seq) == held
        step(core, "w0", w)  # the fake asserts that no block under a copy is given again
        steps_swapping += 1
    assert steps_swapping >= 2 and low.status == Status.SWAPPED
    drive(core, fakes)
    assert low.finish_reason is FinishReason.LENGTH and hi.finish_reason is FinishReason.LENGTH


def test_running_again_while_swapping_out_cancels_and_keeps_blocks():
    core, fakes, w, low, hi = _low_then_high(swap_delay=5)
    blocks = core.workers["w0"].allocator.block_ids(low.seq)
    core.cancel(hi.request_id)  # the reason to preempt is gone
    cancelled = []
    for _ in range(3):
        plan = step(core, "w0", w)
        cancelled += plan.cancel_swap_out if plan else []
    assert low.seq in cancelled
    assert low.status == Status.RUNNING and low.swap_ins == 0
    assert core.workers["w0"].allocator.block_ids(low.seq)[: len(blocks)] == blocks
    drive(core, fakes)
    assert low.finish_reason is FinishReason.LENGTH
    ref_core, ref = make(policy="fcfs", blocks=64)
    ref_low = ref_core.submit(
        prompt_ids=list(range(20)), sampling=Sampling(), limits=GenerationLimits(max_tokens=30)
    )
    drive(ref_core, ref)
    assert low.output_ids == ref_low.output_ids


def test_cancel_during_swap_frees_after_the_copy():
    core, fakes, w, low, hi = _low_then_high(swap_delay=3)
    core.cancel("low")
    assert core.workers["w0"].allocator.num_blocks_of(low.seq) > 0  # still under the copy
    drive(core, fakes)
    assert core.workers["w0"].allocator.num_free == 16
    assert not w.host.committed and not w.host.leases and not w.host.reserved
    assert hi.finish_reason is FinishReason.LENGTH


def test_host_memory_short_falls_back_to_recompute():
    core, fakes = make(
        blocks=14, preempt_margin=0, priority_update_interval=1, host=FakeHost(capacity=0)
    )
    reqs = submit_all(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert core.counters.recomputes > 0 and core.counters.swap_ins == 0


def test_tiny_contexts_are_recomputed_not_swapped():
    core, fakes = make(
        blocks=14, min_swap_tokens=10_000, preempt_margin=0, priority_update_interval=1
    )
    reqs = submit_all(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert core.counters.swap_outs == 0 and core.counters.preemptions > 0


def test_a_request_just_swapped_in_computes_before_rank_preemption_takes_it_again():
    core, fakes = make(
        policy="priority", blocks=8, bs=4, max_num_seqs=1, priority_update_interval=1
    )
    w = fakes["w0"]
    low = core.submit(
        prompt_ids=list(range(20)),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=8),
        priority=0,
    )
    step(core, "w0", w)

    def high(n: int):
        return core.submit(
            prompt_ids=list(range(12)),
            sampling=Sampling(),
            limits=GenerationLimits(max_tokens=n),
            priority=9,
        )

    hi = high(2)
    while low.swap_ins == 0 or low.status != Status.RUNNING:
        step(core, "w0", w)
    assert hi.is_finished and low.just_swapped_in
    computed = low.num_computed
    hi2 = high(2)  # outranks low and lacks the slot, right after low's swap-in
    plan = step(core, "w0", w)
    assert plan is not None and low.seq in plan.decode and low.status == Status.RUNNING
    assert low.num_computed == computed + 1 and low.swap_outs == 1
    while low.swap_outs == 1:
        step(core, "w0", w)  # it has computed: now the rank preemption takes it
    drive(core, fakes)
    assert hi2.finish_reason is FinishReason.LENGTH and low.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("swap_delay", [1, 3])
def test_swap_outs_the_store_does_not_commit_are_recomputed_with_identical_tokens(swap_delay):
    """The store is gone: every swap-out copy is reported not committed. No request is lost or
    aborted; each is recomputed, the tokens are an undisturbed run's, and nothing leaks."""
    core, fakes = make(blocks=14, swap_delay=swap_delay, preempt_margin=0)
    fakes["w0"].fail_commit = True
    reqs = submit_all(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)
    assert core.counters.swap_outs == 0 and core.counters.recomputes > 0
    assert core.workers["w0"].allocator.num_free == 14
    host = fakes["w0"].host
    assert not host.reserved and not host.leases, "host memory leaked"


@pytest.mark.parametrize("swap_delay", [1, 3])
def test_a_store_lost_mid_storm_recomputes_what_it_held_with_identical_tokens(swap_delay):
    """The store restarts in the middle of a preemption storm (a fresh, empty store replaces
    it): host copies are forgotten, copies in flight fail, SWAPPED requests are recomputed; the
    tokens are an undisturbed run's and the new store holds no lease or reservation after."""
    core, fakes = make(blocks=14, swap_delay=swap_delay, preempt_margin=0, retain=True)
    w = fakes["w0"]
    reqs = submit_all(core)
    while core.counters.swap_outs < 3:
        step(core, "w0", w)
    assert core.num_swapped() > 0
    core.on_store_lost()
    core.check_integrity()
    w.host = FakeHost()  # the restarted store: empty, knows no lease of the old one
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == reference()
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)
    assert core.counters.store_losses == 1
    assert core.workers["w0"].allocator.num_free == 14
    assert not w.host.reserved and not w.host.leases, "host memory leaked in the new store"
