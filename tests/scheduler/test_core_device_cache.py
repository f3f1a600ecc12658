"""The device prefix cache in the scheduler core (fake worker + fake store): shared prefixes,
eviction, preemption, resume elsewhere, tenant isolation, and a property test.

The fake worker's "model" hashes every token whose KV it reads back from its blocks, so a shared
block holding other content, a prefill that starts at the wrong position, or a write into a
shared block (which the fake refuses) changes the output. ``drive`` and ``step`` check the
core's integrity (reference counts, cached-block hashes, block tables) after every step. The
expected output of a prompt is the fake's greedy continuation, computed directly.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_fakes import FakeHost, FakeWorker, drive, next_token, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.fetch_cost import NOT_MEASURED
from scheduler_svc.plan import StepOutput
from scheduler_svc.policy import make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo

BS = 4
SYSTEM = [(11 * i + 3) % 200 for i in range(21)]  # 5 full blocks and a bit


def expected(prompt: list[int], n: int) -> list[int]:
    """The fake model's greedy output: token i follows the prompt and tokens before it."""
    out: list[int] = []
    for _ in range(n):
        out.append(next_token(prompt + out))
    return out


def make(*, cache=True, blocks=64, workers=("w0",), policy="fcfs", costs=NOT_MEASURED, **cfg):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(device_prefix_cache=cache, **cfg),
        make_policy(policy),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
        model_fingerprint="m",
        secret=b"s",
    )
    host = FakeHost()
    fakes = {}
    for wid in workers:
        info = WorkerInfo(
            wid, num_blocks=blocks, block_size=BS, block_bytes=10, max_model_len=512, costs=costs
        )
        core.add_worker(info)
        fakes[wid] = FakeWorker(info, host)
    return core, fakes


def submit(core, prompt, *, tenant="t", out=6, retain=False) -> Request:
    return core.submit(
        prompt_ids=list(prompt),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=out),
        tenant=tenant,
        retain_ttl_s=0.0 if retain else None,
    )


def evict_cached(core, wid, count=None) -> None:
    """Forces the eviction of `count` cached blocks (all: None) by allocating through them."""
    alloc = core.workers[wid].allocator
    evictable = alloc.num_evictable
    n = _truly_free(alloc) + (evictable if count is None else min(count, evictable))
    if n:
        assert alloc.allocate("probe", n) is not None
        alloc.free("probe")


def _truly_free(alloc) -> int:
    return alloc.num_free - alloc.num_evictable


def prompts(n: int) -> list[list[int]]:
    return [SYSTEM + [(5 * i + j) % 200 for j in range(3 + i % 4)] for i in range(n)]


# ------------------------------------------------------------------ the hit path


def test_a_shared_system_prompt_is_served_from_the_device_with_identical_outputs():
    core, fakes = make()
    first = submit(core, prompts(1)[0])
    drive(core, fakes)
    assert first.device_cached_tokens == 0 and first.output_ids == expected(first.prompt_ids, 6)
    alloc = core.workers["w0"].allocator
    assert alloc.num_cached == (len(first.prompt_ids) + 5) // BS  # its full computed blocks
    later = [submit(core, p) for p in prompts(8)[1:]]
    step(core, "w0", fakes["w0"])  # all admitted at once, sharing the cached system prompt
    shared = {tuple(alloc.prefix_of(r.seq)) for r in later}
    assert len(shared) == 1 and len(next(iter(shared))) == len(SYSTEM) // BS
    drive(core, fakes)
    for r in later:
        assert r.finish_reason is FinishReason.LENGTH
        assert r.device_cached_tokens == r.cached_prompt_tokens == len(SYSTEM) // BS * BS
        assert r.output_ids == expected(r.prompt_ids, 6)
    assert core.counters.device_hit_tokens == 7 * (len(SYSTEM) // BS * BS)
    assert core.counters.device_hit_blocks == 7 * (len(SYSTEM) // BS)
    # The same requests with the cache off: same outputs, nothing reused.
    off, off_fakes = make(cache=False)
    reqs = [submit(off, p) for p in prompts(8)]
    drive(off, off_fakes)
    assert [r.output_ids for r in reqs] == [first.output_ids] + [r.output_ids for r in later]
    assert all(r.cached_prompt_tokens == 0 for r in reqs)
    assert off.workers["w0"].allocator.num_cached == 0


def test_a_hit_starts_prefilling_at_the_matched_tokens_and_is_not_charged_for_them():
    core, fakes = make()
    drive_one(core, fakes, [*SYSTEM, 1, 2])
    req = submit(core, [*SYSTEM, 9, 9, 9])
    plan = step(core, "w0", fakes["w0"])
    assert plan is not None
    start = next(s for s in plan.start if s.seq == req.seq)
    chunk = next(c for c in plan.prefill if c.seq == req.seq)
    matched = len(SYSTEM) // BS * BS
    assert start.position == matched
    assert list(chunk.token_ids) == req.prompt_ids[matched:]
    assert req.prompt_charged == len(req.prompt_ids)
    drive(core, fakes)
    assert core.tallies["t"].prompt_tokens == len(SYSTEM) + 2 + len(req.prompt_ids) - matched


def drive_one(core, fakes, prompt, **kw) -> Request:
    req = submit(core, prompt, **kw)
    drive(core, fakes)
    return req


def test_a_whole_cached_prompt_still_computes_its_last_block():
    core, fakes = make()
    prompt = SYSTEM[:16]  # exactly 4 blocks
    first = drive_one(core, fakes, prompt)
    again = drive_one(core, fakes, prompt)
    assert again.device_cached_tokens == 12  # all blocks but the one holding the last token
    assert again.output_ids == first.output_ids == expected(prompt, 6)


def test_tenants_never_share_device_blocks():
    core, fakes = make()
    drive_one(core, fakes, SYSTEM, tenant="alice")
    alice2 = submit(core, SYSTEM, tenant="alice")
    bob = submit(core, SYSTEM, tenant="bob")
    step(core, "w0", fakes["w0"])
    alloc = core.workers["w0"].allocator
    assert alloc.prefix_of(alice2.seq) and not alloc.prefix_of(bob.seq)
    assert not set(alloc.block_ids(bob.seq)) & set(alloc.block_ids(alice2.seq))
    drive(core, fakes)
    assert bob.device_cached_tokens == 0 and alice2.device_cached_tokens > 0
    assert bob.output_ids == alice2.output_ids == expected(SYSTEM, 6)


def test_a_cancelled_request_leaves_its_computed_blocks_cached():
    core, fakes = make(max_prefill_chunk=8, max_batched_tokens=8)
    req = submit(core, [*SYSTEM, 1, 2, 3], out=50)
    for _ in range(5):
        step(core, "w0", fakes["w0"])
    computed = req.num_computed
    core.cancel(req.request_id)
    drive(core, fakes)
    assert core.workers["w0"].allocator.num_cached == computed // BS
    again = drive_one(core, fakes, [*SYSTEM, 1, 2, 3])
    assert again.device_cached_tokens == len(SYSTEM) // BS * BS
    assert again.output_ids == expected(again.prompt_ids, 6)


def test_blocks_of_a_failed_step_after_a_cancel_are_not_kept():
    core, fakes = make(max_prefill_chunk=8, max_batched_tokens=8)
    req = submit(core, SYSTEM, out=6)
    plan = core.schedule("w0")
    assert plan is not None and plan.prefill
    core.cancel(req.request_id)  # while the step runs ... and the step's forward fails
    core.update_from_output("w0", StepOutput(plan.step_id, {}, errors={req.seq: "boom"}))
    core.check_integrity()
    assert core.workers["w0"].allocator.num_cached == 0
    again = drive_one(core, fakes, SYSTEM)
    assert again.device_cached_tokens == 0 and again.output_ids == expected(SYSTEM, 6)


def test_an_aborted_request_leaves_nothing_cached():
    core, _fakes = make()
    req = submit(core, SYSTEM, out=6)
    plan = core.schedule("w0")
    assert plan is not None
    core.update_from_output("w0", StepOutput(plan.step_id, {}, errors={req.seq: "boom"}))
    core.check_integrity()
    assert req.finish_reason is FinishReason.ABORTED
    assert core.workers["w0"].allocator.num_cached == 0


# ------------------------------------------------------------- eviction


def test_forced_eviction_at_every_step_keeps_outputs_identical():
    core, fakes = make(blocks=40, max_num_seqs=3)
    reqs = [submit(core, p, out=8) for p in prompts(10)]
    for _ in range(5000):
        progressed = step(core, "w0", fakes["w0"]) is not None
        evict_cached(core, "w0")
        core.check_integrity()
        assert core.workers["w0"].allocator.num_free == _truly_free(core.workers["w0"].allocator)
        if not progressed:
            break
    assert all(r.output_ids == expected(r.prompt_ids, 8) for r in reqs)
    assert core.counters.device_evicted_blocks > 0


def test_eviction_takes_free_blocks_first_then_least_recently_used_leaves():
    core, fakes = make(blocks=32)
    a = drive_one(core, fakes, [1] * 12 + [2])  # 3 full prompt blocks + reply: 4 cached
    b = drive_one(core, fakes, [3] * 12 + [4])
    alloc = core.workers["w0"].allocator
    assert alloc.num_cached == 8 and core.counters.device_evicted_blocks == 0
    evict_cached(core, "w0", 0)  # every truly free block: nothing cached goes
    assert alloc.num_cached == 8 and core.counters.device_evicted_blocks == 0
    evict_cached(core, "w0", 3)  # a's chain is older: its last three blocks go, tail first
    assert core.counters.device_evicted_blocks == 3
    assert (
        alloc.match(a.hashes[:4]) == alloc.match(a.hashes[:1]) and len(alloc.match(a.hashes)) == 1
    )
    assert len(alloc.match(b.hashes[:4])) == 4
    again = drive_one(core, fakes, [1] * 12 + [2])
    assert again.device_cached_tokens == BS and again.output_ids == a.output_ids


def test_a_shared_block_is_never_evicted():
    core, fakes = make(blocks=16, max_num_seqs=8)
    drive_one(core, fakes, SYSTEM[:9], out=1)  # 9 tokens computed: 2 full blocks cached
    other = drive_one(core, fakes, [5] * 9, out=1)  # 2 more, used later
    holder = submit(core, [*SYSTEM[:8], 7], out=40)
    step(core, "w0", fakes["w0"])
    alloc = core.workers["w0"].allocator
    prefix = alloc.prefix_of(holder.seq)
    assert len(prefix) == 2 and alloc.num_evictable == 2
    evict_cached(core, "w0", 1)  # the least recently used leaf not shared: other's tail
    assert all(alloc.is_cached(b) for b in prefix) and len(alloc.match(other.hashes)) == 1
    evict_cached(core, "w0")  # everything evictable goes, the shared prefix stays
    assert all(alloc.is_cached(b) for b in prefix) and alloc.num_cached == 2
    drive(core, fakes)
    assert holder.output_ids == expected(holder.prompt_ids, 40)


# ----------------------------------------------------- preemption and resume


@pytest.mark.parametrize("preemption", ["swap", "recompute"])
def test_a_preemption_storm_keeps_outputs_identical(preemption):
    core, fakes = make(
        blocks=24, preemption=preemption, min_swap_tokens=1, max_num_seqs=6, policy="priority"
    )
    reqs = []
    for i, p in enumerate(prompts(14)):
        reqs.append(
            core.submit(
                prompt_ids=p,
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=12),
                tenant="t",
                priority=-i,  # each newcomer outranks the running ones
            )
        )
        step(core, "w0", fakes["w0"])
    drive(core, fakes)
    assert core.counters.preemptions > 0 and core.counters.device_hit_tokens > 0
    assert all(r.output_ids == expected(r.prompt_ids, 12) for r in reqs)


def test_a_swapped_in_request_copies_only_what_the_device_lacks():
    core, fakes = make(blocks=64, preemption="swap", min_swap_tokens=1, retain=True)
    prompt = SYSTEM + list(range(9))  # 30 tokens
    first = drive_one(core, fakes, prompt, retain=True)
    evict_cached(core, "w0", 3)  # the device keeps only the head of the chain
    kept = len(core.workers["w0"].allocator.match(first.hashes))
    again = submit(core, prompt)
    plans = drive(core, fakes)
    host_hit = (len(prompt) - 1) // BS
    assert again.cached_prompt_tokens == host_hit * BS
    assert again.device_cached_tokens == kept * BS and 0 < kept < host_hit
    copied_in = sum(c.count for p in plans for o in p.swap_in for c in o.copies)
    assert copied_in == host_hit - kept
    assert again.output_ids == first.output_ids == expected(prompt, 6)


def test_requests_resume_on_another_worker_with_its_cache():
    core, fakes = make(workers=("w0", "w1"))
    warm = submit(core, prompts(1)[0])
    while not warm.is_finished:  # only w1 runs: the system prompt is cached there
        step(core, "w1", fakes["w1"])
    reqs = [submit(core, p, out=10) for p in prompts(4)[1:]]
    for _ in range(3):
        step(core, "w0", fakes["w0"])
    assert all(r.worker_id == "w0" for r in reqs)
    core.remove_worker("w0")
    drive(core, {"w1": fakes["w1"]})
    assert all(r.recomputes == 1 and r.device_cached_tokens > 0 for r in reqs)
    assert all(r.output_ids == expected(r.prompt_ids, 10) for r in reqs)


def test_deleting_a_conversation_drops_its_device_blocks():
    core, fakes = make(preemption="swap", retain=True)
    first = drive_one(core, fakes, SYSTEM, retain=True)
    assert core.workers["w0"].allocator.num_cached > 0
    core.free_retained("t", SYSTEM + first.output_ids[:-1])
    assert core.workers["w0"].allocator.num_cached == 0


# ------------------------------------------------------------ property test

OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 3), st.integers(0, 6), st.sampled_from("ab")),
    st.tuples(st.just("step"), st.sampled_from(["w0", "w1"]), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("evict"), st.sampled_from(["w0", "w1"]), st.integers(0, 8)),
    st.tuples(st.just("bounce"), st.sampled_from(["w0", "w1"])),
)
BASES = [SYSTEM, SYSTEM[:9], [9] * 13, SYSTEM[:4] + [1] * 10]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, max_size=40), preemption=st.sampled_from(["swap", "recompute"]))
def test_random_admit_finish_evict_preempt_sequences(ops, preemption):
    core, fakes = make(
        workers=("w0", "w1"),
        blocks=20,
        preemption=preemption,
        min_swap_tokens=1,
        max_num_seqs=4,
        max_prefill_chunk=8,
        max_batched_tokens=16,
        policy="priority",
    )
    reqs: list[Request] = []
    for op in ops:
        if op[0] == "submit":
            _, base, extra, tenant = op
            prompt = BASES[base] + [(3 * len(reqs) + j) % 200 for j in range(extra)]
            reqs.append(
                core.submit(
                    prompt_ids=prompt,
                    sampling=Sampling(),
                    limits=GenerationLimits(max_tokens=5 + len(reqs) % 5),
                    tenant=tenant,
                    priority=-len(reqs) % 3,
                )
            )
        elif op[0] == "step":
            for _ in range(op[2]):
                step(core, op[1], fakes[op[1]])
        elif op[0] == "cancel" and reqs:
            core.cancel(reqs[op[1] % len(reqs)].request_id)
        elif op[0] == "evict":
            evict_cached(core, op[1], op[2])
        elif op[0] == "bounce":  # the worker leaves and joins again with an empty pool
            core.remove_worker(op[1])
            info = fakes[op[1]].info
            core.add_worker(info)
            fakes[op[1]] = FakeWorker(info, fakes[op[1]].host)
        core.check_integrity()
    drive(core, fakes)
    for r in reqs:
        want = expected(r.prompt_ids, r.limits.max_tokens)
        if r.finish_reason is FinishReason.LENGTH:
            assert r.output_ids == want
        else:
            assert r.finish_reason is FinishReason.CANCELLED
            assert r.output_ids == want[: len(r.output_ids)]
    for slot in core.workers.values():
        assert not slot.allocator.owners()  # everything ended: only cached blocks remain
        assert slot.allocator.num_free == slot.info.num_blocks
