"""The scheduler core on CPU, with the fake worker of sched_fakes.py (no server, no model).

The fake's "model" is a hash of every token whose KV it holds for a sequence, so a plan that feeds
the wrong tokens, skips a chunk, or resumes a recomputed request from the wrong place changes the
output — the same greedy-invariance property the real engine must keep.
"""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import FakeWorker, drive, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.errors import InvalidArgument, ResourceExhausted
from scheduler_svc.policy import FcfsPolicy, make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Sampling, Status
from scheduler_svc.workers import WorkerInfo

EOS = 255


def make_core(policy: str = "fcfs", **cfg) -> SchedulerCore:
    return SchedulerCore(CoreConfig(**cfg), make_policy(policy), eos_token_ids=[EOS])


def add_worker(core: SchedulerCore, wid: str = "w0", blocks: int = 64, bs: int = 4) -> FakeWorker:
    info = WorkerInfo(wid, num_blocks=blocks, block_size=bs, block_bytes=1, max_model_len=4096)
    core.add_worker(info)
    return FakeWorker(info)


def submit(core: SchedulerCore, prompt_len: int, max_tokens: int, tenant: str = "t", seed=0):
    prompt = [(seed * 31 + i * 7) % 200 for i in range(prompt_len)]
    return core.submit(
        prompt_ids=prompt,
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=max_tokens),
        tenant=tenant,
    )


def outputs(reqs) -> list[list[int]]:
    return [list(r.output_ids) for r in reqs]


def test_requests_run_to_max_tokens_and_free_everything():
    core = make_core()
    w = add_worker(core)
    reqs = [submit(core, 5 + i, 6, seed=i) for i in range(5)]
    plans = drive(core, {"w0": w})
    assert all(r.finish_reason is FinishReason.LENGTH and len(r.output_ids) == 6 for r in reqs)
    assert core.workers["w0"].allocator.num_free == 64
    # The worker was told to forget every sequence, and holds nothing.
    assert sorted(itertools.chain.from_iterable(p.drop for p in plans)) == [r.seq for r in reqs]
    assert w.seqs == {} and w.holders == {}
    assert core.schedule("w0") is None


def test_chunked_prefill_respects_budget_and_keeps_decodes_going():
    core = make_core(max_batched_tokens=8, max_prefill_chunk=8)
    w = add_worker(core, blocks=128)
    short = submit(core, 3, 20, seed=1)
    step(core, "w0", w)
    long = submit(core, 40, 4, seed=2)
    steps = drive(core, {"w0": w})
    for plan in steps:
        assert plan.num_tokens <= 8
    # While the long prompt was being prefilled in chunks, the short request kept decoding.
    mixed = [p for p in steps if p.decode and p.prefill]
    assert len(mixed) >= 4
    assert short.finish_reason is FinishReason.LENGTH and long.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_outputs_do_not_depend_on_chunking_batching_or_preemption(budget):
    reference_core = make_core()
    ref_worker = add_worker(reference_core, blocks=512)
    ref = [submit(reference_core, 5 + 3 * i, 12, seed=i) for i in range(8)]
    drive(reference_core, {"w0": ref_worker})

    # A pool so small that most steps preempt (recompute), and a small token budget.
    core = make_core(max_batched_tokens=budget, max_prefill_chunk=budget)
    w = add_worker(core, blocks=12)
    reqs = [submit(core, 5 + 3 * i, 12, seed=i) for i in range(8)]
    drive(core, {"w0": w})
    assert outputs(reqs) == outputs(ref)
    assert core.counters.preemptions > 0 or budget == 1


def test_preemption_takes_the_lowest_ranked_request():
    core = make_core()
    w = add_worker(core, blocks=6, bs=4)
    first = submit(core, 8, 16, seed=1)  # 2 blocks, grows to 6
    second = submit(core, 8, 16, seed=2)
    for _ in range(6):
        step(core, "w0", w)
    assert second.preemptions >= 1 and first.preemptions == 0
    drive(core, {"w0": w})
    assert first.finish_reason is FinishReason.LENGTH
    assert second.finish_reason is FinishReason.LENGTH


def test_cancel_frees_blocks_and_drops_on_the_worker():
    core = make_core()
    w = add_worker(core)
    req = submit(core, 10, 50)
    step(core, "w0", w)
    assert core.workers["w0"].allocator.num_blocks_of(req.seq) > 0
    event = core.cancel(req.request_id)
    assert event is not None and event.finished and req.finish_reason is FinishReason.CANCELLED
    assert core.workers["w0"].allocator.num_free == 64
    plan = core.schedule("w0")
    assert plan is not None and plan.drop == [req.seq] and not plan.decode
    w.run(plan)
    assert req.seq not in w.seqs
    assert core.cancel(req.request_id) is None  # already finished
    core.check_integrity()


def test_cancel_while_waiting_and_tokens_of_cancelled_requests_are_ignored():
    core = make_core()
    w = add_worker(core)
    waiting = submit(core, 4, 4)
    assert core.cancel(waiting.request_id) is not None
    assert core.schedule("w0") is None
    running = submit(core, 4, 4)
    plan = core.schedule("w0")
    core.cancel(running.request_id)
    events = core.update_from_output("w0", w.run(plan))
    core.check_integrity()
    assert events == [] and running.output_ids == []


def test_worker_leaving_requeues_for_recompute_with_identical_output():
    ref_core = make_core()
    ref_w = add_worker(ref_core)
    ref = [submit(ref_core, 6, 10, seed=i) for i in range(4)]
    drive(ref_core, {"w0": ref_w})

    core = make_core()
    w0 = add_worker(core, "w0")
    reqs = [submit(core, 6, 10, seed=i) for i in range(4)]
    for _ in range(4):
        step(core, "w0", w0)
    assert core.remove_worker("w0") == 4
    core.check_integrity()
    assert all(r.status == Status.WAITING and r.num_computed == 0 for r in reqs)
    w1 = add_worker(core, "w1")
    drive(core, {"w1": w1})
    assert outputs(reqs) == outputs(ref)
    assert all(r.recomputes == 1 for r in reqs)


def test_two_workers_share_the_queue():
    core = make_core(max_num_seqs=2)
    workers = {"a": add_worker(core, "a"), "b": add_worker(core, "b")}
    reqs = [submit(core, 5, 5, seed=i) for i in range(6)]
    drive(core, workers)
    assert {r.worker_id for r in reqs} == {"a", "b"}
    assert all(r.finish_reason is FinishReason.LENGTH for r in reqs)


def test_stop_tokens_and_eos():
    core = make_core()
    w = add_worker(core)
    probe = submit(core, 5, 3, seed=9)
    drive(core, {"w0": w})
    first = probe.output_ids[0]
    req = core.submit(
        prompt_ids=list(probe.prompt_ids),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=10, stop_token_ids=frozenset({first})),
    )
    drive(core, {"w0": w})
    assert req.output_ids == [first] and req.finish_reason is FinishReason.STOP


def test_bad_submissions():
    core = make_core(max_waiting=1)
    add_worker(core, blocks=4, bs=4)
    with pytest.raises(ResourceExhausted, match="exceed"):
        submit(core, 10, 10)
    r = submit(core, 2, 2)
    with pytest.raises(InvalidArgument, match="already in use"):
        core.submit(
            prompt_ids=[1],
            sampling=Sampling(),
            limits=GenerationLimits(max_tokens=1),
            request_id=r.request_id,
        )
    with pytest.raises(ResourceExhausted, match="queue is full"):
        submit(core, 2, 2)
    with pytest.raises(ValueError, match="max_batched_tokens"):
        CoreConfig(max_batched_tokens=0)


def test_fcfs_admits_in_arrival_order():
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(max_num_seqs=1), FcfsPolicy(), eos_token_ids=[EOS], clock=lambda: next(clock)
    )
    w = add_worker(core)
    reqs = [submit(core, 3, 2, seed=i) for i in range(4)]
    order = []
    for plan in drive(core, {"w0": w}):
        order.extend(s.seq for s in plan.start)
    assert order == [r.seq for r in reqs]


def test_a_stop_string_finishes_a_running_request_as_stop_and_frees_it():
    core = make_core()
    w = add_worker(core)
    req = submit(core, 6, 10)
    while len(req.output_ids) < 3:
        step(core, "w0", w)
    core.finish_on_stop_string(req.request_id)
    assert req.finish_reason is FinishReason.STOP and req.is_finished
    drive(core, {"w0": w})
    assert len(req.output_ids) == 3  # no step computed it again
    assert core.workers["w0"].allocator.num_free == 64 and w.seqs == {}
    # The token that completed the stop string also reached max_tokens: reported as stopped.
    capped = submit(core, 6, 1, seed=1)
    drive(core, {"w0": w})
    assert capped.finish_reason is FinishReason.LENGTH
    core.finish_on_stop_string(capped.request_id)
    assert capped.finish_reason is FinishReason.STOP
    c = core.stats().counters
    assert (c.finished, c.cancelled) == (2, 0)
    core.check_integrity()
