"""Asynchronous scheduling in the core: a worker's next plan is made while its current one runs
(one plan ahead), before that plan's result is known.

The plan ahead decodes what the running plan samples (the worker feeds its own token), never
past a request's last token by length, and wastes one decode when a stop token ends a request.
Outputs are the synchronous core's, token for token, through preemption storms by swap and by
recompute, the device tier, several workers; a finishing request leaves cached only the KV that
results reported."""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import FakeHost, FakeWorker, drive

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.plan import StepOutput
from scheduler_svc.policy import make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo

EOS = 255
BS = 4


def make(*, ahead=True, policy="fcfs", blocks=256, workers=("w0",), swap_delay=1, **cfg):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(
            **{"preemption": "swap", "min_swap_tokens": 1, "async_scheduling": ahead, **cfg}
        ),
        make_policy(policy),
        eos_token_ids=[EOS],
        clock=lambda: next(clock) * 0.001,
    )
    host = FakeHost()
    fakes = {}
    for wid in workers:
        info = WorkerInfo(wid, num_blocks=blocks, block_size=BS, block_bytes=100, max_model_len=512)
        core.add_worker(info)
        fakes[wid] = FakeWorker(info, host, swap_delay=swap_delay)
    return core, fakes


def submit(core, prompt, out, *, tenant="a", stop=()) -> Request:
    return core.submit(
        prompt_ids=list(prompt),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=out, stop_token_ids=tuple(stop)),
        tenant=tenant,
    )


def workload(core, n=10, tenants=("a", "b", "c")) -> list[Request]:
    return [
        submit(
            core,
            [(i * 37 + j * 11) % 200 for j in range(6 + i % 5)],
            12 + i % 4,
            tenant=tenants[i % len(tenants)],
        )
        for i in range(n)
    ]


def sync_outputs(**cfg) -> list[list[int]]:
    core, fakes = make(ahead=False, **cfg)
    reqs = workload(core)
    drive(core, fakes)
    return [list(r.output_ids) for r in reqs]


def test_the_plan_ahead_decodes_the_token_the_running_plan_samples():
    core, fakes = make()
    req = submit(core, range(6), 4)
    first = core.schedule("w0")
    ahead = core.schedule("w0")  # the first plan's result is not in yet
    assert first is not None and [c.sample for c in first.prefill] == [True]
    assert ahead is not None and ahead.decode == [req.seq] and not ahead.prefill
    assert req.num_computed == 7 and req.output_ids == []
    w = fakes["w0"]
    core.update_from_output("w0", w.run(first))
    core.update_from_output("w0", w.run(ahead))
    core.check_integrity()
    assert len(req.output_ids) == 2
    drive(core, fakes)
    ref, ref_fakes = make(ahead=False)
    again = submit(ref, range(6), 4)
    drive(ref, ref_fakes)
    assert req.output_ids == again.output_ids and req.finish_reason is FinishReason.LENGTH


def test_no_plan_decodes_past_the_last_token_by_length():
    core, fakes = make()
    one = submit(core, range(6), 1)
    first = core.schedule("w0")
    assert first is not None
    assert core.schedule("w0") is None  # its one token is being sampled: nothing is left
    core.update_from_output("w0", fakes["w0"].run(first))
    assert one.finish_reason is FinishReason.LENGTH
    reqs = [submit(core, range(i, i + 6), 5) for i in range(3)]
    plans = drive(core, fakes)
    assert all(len(r.output_ids) == 5 for r in reqs)
    assert sum(len(p.decode) for p in plans) == 3 * 4  # not one decode more than the tokens
    assert core.counters.discarded_tokens == 0


def test_a_stop_token_costs_one_decode_in_vain_and_nothing_else():
    ref, ref_fakes = make(ahead=False)
    free = submit(ref, range(8), 12)
    drive(ref, ref_fakes)
    stop = free.output_ids[4]
    k = free.output_ids.index(stop) + 1
    core, fakes = make()
    req = submit(core, range(8), 12, stop=[stop])
    drive(core, fakes)
    assert req.finish_reason is FinishReason.STOP and req.output_ids == free.output_ids[:k]
    assert core.counters.discarded_tokens == 1
    slot = core.workers["w0"]
    assert slot.allocator.num_free == slot.info.num_blocks and not slot.running


@pytest.mark.parametrize("swap_delay", [1, 3])
@pytest.mark.parametrize("preemption", ["swap", "recompute"])
@pytest.mark.parametrize("policy", ["vtc", "fcfs", "priority"])
def test_a_preemption_storm_gives_the_synchronous_tokens(policy, preemption, swap_delay):
    storm = dict(
        policy=policy,
        preemption=preemption,
        blocks=14,
        swap_delay=swap_delay,
        preempt_margin=0,
        priority_update_interval=1,
    )
    core, fakes = make(**storm)
    reqs = workload(core)
    drive(core, fakes)
    assert [list(r.output_ids) for r in reqs] == sync_outputs(**storm)
    assert core.counters.preemptions > 0
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)
    assert core.workers["w0"].allocator.num_free == 14


@pytest.mark.parametrize("device_prefix_cache", [False, True])
def test_two_workers_and_the_device_tier_give_the_synchronous_tokens(device_prefix_cache):
    shape = dict(
        workers=("w0", "w1"),
        blocks=20,
        device_prefix_cache=device_prefix_cache,
        policy="vtc",
        preempt_margin=0,
        priority_update_interval=1,
    )
    core, fakes = make(**shape)
    reqs = workload(core, n=16)
    drive(core, fakes)
    ref, ref_fakes = make(ahead=False, **shape)
    ref_reqs = workload(ref, n=16)
    drive(ref, ref_fakes)
    assert [r.output_ids for r in reqs] == [r.output_ids for r in ref_reqs]
    assert {r.worker_id for r in reqs} == {"w0", "w1"}  # both workers served
    assert not any(slot.running for slot in core.workers.values())


def test_a_request_cancelled_with_plans_running_caches_only_what_was_reported():
    core, fakes = make(device_prefix_cache=True, max_prefill_chunk=8, max_batched_tokens=8)
    w = fakes["w0"]
    req = submit(core, range(16), 4)
    first, second = core.schedule("w0"), core.schedule("w0")  # tokens 0-7, then 8-15
    assert first is not None and second is not None
    core.update_from_output("w0", w.run(first))
    core.cancel(req.request_id)  # the second chunk still runs
    slot = core.workers["w0"]
    assert slot.allocator.num_cached == 2  # the reported 8 tokens: two full blocks
    core.update_from_output("w0", w.run(second))
    core.check_integrity()
    assert core.counters.discarded_tokens == 1  # its first token, sampled after the cancel
    again = submit(core, [*range(16), 99], 4)
    drive(core, fakes)
    assert again.device_cached_tokens == 8
    ref, ref_fakes = make(ahead=False)
    fresh = submit(ref, [*range(16), 99], 4)
    drive(ref, ref_fakes)
    assert again.output_ids == fresh.output_ids


def test_a_failed_sequence_that_the_plan_ahead_computes_again_is_aborted_once():
    core, _fakes = make()
    req = submit(core, range(6), 8)
    first, ahead = core.schedule("w0"), core.schedule("w0")
    assert first is not None and ahead is not None and ahead.decode == [req.seq]
    events = core.update_from_output("w0", StepOutput(first.step_id, {}, errors={req.seq: "x"}))
    assert [e.finished for e in events] == [True] and req.finish_reason is FinishReason.ABORTED
    # The worker forgot it after the failure: the plan ahead fails on it too.
    again = StepOutput(ahead.step_id, {}, errors={req.seq: f"unknown sequence {req.seq}"})
    assert core.update_from_output("w0", again) == []
    core.check_integrity()
    slot = core.workers["w0"]
    assert slot.allocator.num_free == slot.info.num_blocks and slot.allocator.num_cached == 0
    assert core.counters.failed == 1


def test_at_most_one_plan_ahead_and_none_without_async_scheduling():
    core, _ = make()
    submit(core, range(40), 30)
    assert core.schedule("w0") is not None and core.schedule("w0") is not None
    with pytest.raises(RuntimeError, match="2 plans unanswered"):
        core.schedule("w0")
    sync, _ = make(ahead=False)
    submit(sync, range(40), 30)
    assert sync.schedule("w0") is not None
    with pytest.raises(RuntimeError, match="1 plans unanswered; at most 0"):
        sync.schedule("w0")


def test_a_result_must_answer_the_oldest_plan_running():
    core, fakes = make()
    submit(core, range(40), 30)
    first, second = core.schedule("w0"), core.schedule("w0")
    assert first is not None and second is not None
    with pytest.raises(ValueError, match=f"answered step {second.step_id}, expected"):
        core.update_from_output("w0", StepOutput(second.step_id, {}))
    core.update_from_output("w0", fakes["w0"].run(first))
    core.check_integrity()
