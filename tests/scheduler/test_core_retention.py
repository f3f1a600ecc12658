"""Retained KV in the scheduler core: offload at finish, content-addressed lookup of new prompts,
reuse across turns, tenant isolation, eviction, deletion (fake worker + fake store)."""

from __future__ import annotations

import itertools

from sched_fakes import FakeHost, FakeWorker, drive, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.host_ops import HostOpKind
from scheduler_svc.plan import StepOutput
from scheduler_svc.policy import make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Sampling, Status

BS = 4


def make(retain=True, host=None, blocks=256):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(preemption="swap", min_swap_tokens=1, retain=retain),
        make_policy("fcfs"),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
        model_fingerprint="m",
        secret=b"s",
    )
    from scheduler_svc.workers import WorkerInfo

    info = WorkerInfo("w0", num_blocks=blocks, block_size=BS, block_bytes=100, max_model_len=4096)
    core.add_worker(info)
    return core, {"w0": FakeWorker(info, host or FakeHost())}


def run_one(core, fakes, prompt, tenant="t", out=6):
    req = core.submit(
        prompt_ids=list(prompt),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=out),
        tenant=tenant,
        retain_ttl_s=0.0,  # retained when it finishes (a conversation turn)
    )
    drive(core, fakes)
    assert req.finish_reason is FinishReason.LENGTH
    return req


PROMPT = [(7 * i) % 200 for i in range(30)]


def test_a_repeated_prompt_hits_the_retained_prefix_with_identical_output():
    core, fakes = make()
    first = run_one(core, fakes, PROMPT)
    host = fakes["w0"].host
    # Offloaded at finish: every full block of the computed tokens (30 + 5 = 35 -> 8 blocks).
    assert host.retained() == 35 // BS
    second = run_one(core, fakes, PROMPT)
    assert second.cached_prompt_tokens == (len(PROMPT) - 1) // BS * BS  # all but the last block
    assert second.output_ids == first.output_ids
    assert core.counters.reuse_hit_tokens == second.cached_prompt_tokens
    ref_core, ref = make(retain=False)
    assert run_one(ref_core, ref, PROMPT).output_ids == first.output_ids


def test_next_turn_reuses_the_previous_turn_including_its_reply():
    core, fakes = make()
    turn1 = run_one(core, fakes, PROMPT, out=10)
    history = PROMPT + turn1.output_ids + [3, 4, 5, 6, 7, 8]
    turn2 = run_one(core, fakes, history)
    # Turn 1 computed 30 + 9 tokens; their 9 full blocks are reused.
    assert turn2.cached_prompt_tokens == (len(PROMPT) + 9) // BS * BS
    ref_core, ref = make(retain=False)
    assert run_one(ref_core, ref, history).output_ids == turn2.output_ids


def test_tenants_never_share_retained_blocks():
    core, fakes = make()
    run_one(core, fakes, PROMPT, tenant="alice")
    bob = run_one(core, fakes, PROMPT, tenant="bob")
    assert bob.cached_prompt_tokens == 0
    assert fakes["w0"].host.retained() == 2 * (35 // BS)  # two separate copies


def test_a_hit_is_matched_at_submit_without_asking_the_store():
    core, fakes = make()
    first = run_one(core, fakes, PROMPT)
    req = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
    )
    # Resumed from the host at once: its first host op is the pin of its swap-in.
    assert req.status is Status.SWAPPED and req.cached_prompt_tokens == 28
    assert not core.has_host_ops
    assert core.schedule("w0") is None  # admitted: it waits for the pin, nothing computes
    assert req.status is Status.SWAPPING_IN
    ops = core.take_host_ops()
    assert [op.kind for op in ops] == [HostOpKind.PIN]
    assert core.sizes()["host_index"] == 35 // BS  # what the first request's offload committed
    fakes["w0"].host.answer(core, ops)
    drive(core, fakes)
    assert req.output_ids == first.output_ids


def test_eviction_the_index_missed_falls_back_to_recompute_and_is_forgotten():
    """The store evicted the retained blocks on its own: the index still names them, the pin's
    hash check fails, the request is recomputed (same output), and the index forgets them, so
    the next prompt with that prefix prefills without a failed pin first."""
    core, fakes = make()
    first = run_one(core, fakes, PROMPT)
    assert fakes["w0"].host.evict_all() > 0
    again = run_one(core, fakes, PROMPT)
    assert again.recomputes == 1 and again.output_ids == first.output_ids
    assert again.cached_prompt_tokens == 0  # it prefilled all of it in the end
    third = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
    )
    # again's offload at finish wrote the prefix back: a hit again, pinned for real this time.
    assert third.status is Status.SWAPPED
    drive(core, fakes)
    assert third.recomputes == 0 and third.output_ids == first.output_ids


def test_a_block_the_store_gave_out_again_leaves_the_index():
    """A reserve hands out blocks the store evicted: the index drops what it had for them (a
    later match would pin someone else's content; the pin's hash check would refuse it)."""
    core, fakes = make(host=FakeHost(capacity=35 // BS))
    host = fakes["w0"].host
    run_one(core, fakes, PROMPT)
    other = [(11 * i) % 200 for i in range(30)]
    run_one(core, fakes, other)  # its offload evicts the first prompt's blocks, reusing them
    assert host.evictions > 0
    req = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
    )
    assert req.status is Status.WAITING and req.cached_prompt_tokens == 0
    drive(core, fakes)
    assert req.recomputes == 0


def test_deleting_retained_blocks_by_content():
    core, fakes = make()
    first = run_one(core, fakes, PROMPT)
    tokens = PROMPT + first.output_ids[:-1]
    assert core.free_retained("t", tokens) == len(tokens) // BS
    fakes["w0"].host.serve(core)
    assert fakes["w0"].host.retained() == 0
    assert run_one(core, fakes, PROMPT).cached_prompt_tokens == 0


def test_without_retention_nothing_is_offloaded():
    core, fakes = make(retain=False)
    run_one(core, fakes, PROMPT)
    assert fakes["w0"].host.retained() == 0 and not fakes["w0"].host.committed


def test_plain_requests_are_not_offloaded_unless_asked():
    core, fakes = make()
    req = core.submit(
        prompt_ids=list(PROMPT), sampling=Sampling(), limits=GenerationLimits(max_tokens=6)
    )
    drive(core, fakes)
    assert req.finish_reason is FinishReason.LENGTH and fakes["w0"].host.retained() == 0


def test_a_next_turn_arriving_during_the_offload_waits_for_it_and_hits():
    core, fakes = make()
    w = fakes["w0"]
    first = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
        retain_ttl_s=0.0,
    )
    while not first.is_finished:
        step(core, "w0", w)
    assert first.offloading  # finished, its KV still being copied out
    nxt = core.submit(
        prompt_ids=PROMPT + first.output_ids + [1, 2, 3],
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
    )
    drive(core, fakes)
    assert nxt.cached_prompt_tokens == (len(PROMPT) + 5) // BS * BS


def _first_turn_offloading(core, w):
    first = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
        retain_ttl_s=0.0,
    )
    while not first.is_finished:
        step(core, "w0", w)
    assert first.offloading
    return first


def test_an_offload_whose_commit_fails_frees_its_blocks_and_wakes_deferred_lookups():
    """The store died during the offload: the copy is reported not committed; the device blocks
    go, nothing is retained, and the next turn deferred behind it prefills (same output)."""
    core, fakes = make()
    w = fakes["w0"]
    w.fail_commit = True
    first = _first_turn_offloading(core, w)
    history = PROMPT + first.output_ids
    nxt = core.submit(
        prompt_ids=[*history, 1, 2, 3],
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
    )
    drive(core, fakes)
    assert nxt.finish_reason is FinishReason.LENGTH and nxt.cached_prompt_tokens == 0
    assert not first.offloading and w.host.retained() == 0
    assert core.workers["w0"].allocator.num_free == 256  # no device block leaked
    assert not w.host.leases and not w.host.reserved
    ref_core, ref_fakes = make(retain=False)
    ref = run_one(ref_core, ref_fakes, [*history, 1, 2, 3])
    assert nxt.output_ids == ref.output_ids


def test_an_offload_whose_copy_fails_on_the_worker_frees_its_blocks():
    """A finished request's copy reported as a seq error (the copy itself failed) is over:
    its blocks go and the offload count drops."""
    core, fakes = make()
    w = fakes["w0"]
    first = _first_turn_offloading(core, w)
    w.in_flight.clear()
    w.busy_blocks.clear()
    plan = core.schedule("w0")  # the step that finds the copy failed
    assert plan is not None
    error = StepOutput(step_id=plan.step_id, sampled={}, errors={first.seq: "x"})
    core.update_from_output("w0", error)
    core.check_integrity()
    assert not first.offloading
    drive(core, fakes)
    assert core.workers["w0"].allocator.num_free == 256


def test_after_a_store_restart_a_turn_misses_then_reuse_comes_back():
    """Retained prefixes die with the store: the next turn prefills (same output) and is
    retained in the new store, so the turn after hits again."""
    core, fakes = make()
    first = run_one(core, fakes, PROMPT)
    core.on_store_lost()
    fakes["w0"].host = FakeHost()
    second = run_one(core, fakes, PROMPT)
    assert second.cached_prompt_tokens == 0 and second.output_ids == first.output_ids
    third = run_one(core, fakes, PROMPT)
    assert third.cached_prompt_tokens > 0 and third.output_ids == first.output_ids


def test_a_swap_out_copies_only_the_blocks_the_host_lacks():
    """B prefilled a prefix A shares, before A's KV was retained; once A's offload is committed,
    a swap-out of B skips the blocks the host index holds and copies only B's own."""
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(preemption="swap", min_swap_tokens=1, retain=True, preempt_margin=0),
        make_policy("priority"),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
        model_fingerprint="m",
        secret=b"s",
    )
    from scheduler_svc.workers import WorkerInfo

    info = WorkerInfo("w0", num_blocks=24, block_size=BS, block_bytes=100, max_model_len=4096)
    core.add_worker(info)
    w = FakeWorker(info, FakeHost())

    def submit(prompt, out, priority=0, retain=None):
        return core.submit(
            prompt_ids=list(prompt),
            sampling=Sampling(),
            limits=GenerationLimits(max_tokens=out),
            tenant="t",
            priority=priority,
            retain_ttl_s=retain,
        )

    a = submit(PROMPT, 6, retain=0.0)
    b_prompt = [*PROMPT, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    b = submit(b_prompt, 30)
    while not (a.is_finished and not a.offloading):
        step(core, "w0", w)
    assert core.sizes()["host_index"] == 35 // BS and b.status is Status.RUNNING
    copied_before = w.blocks_copied_out
    c_prompt = [(3 * i) % 200 for i in range(60)]
    c = submit(c_prompt, 4, priority=10)  # needs B's blocks: B is swapped out
    while b.status is not Status.SWAPPED:
        step(core, "w0", w)
    shared = 28 // BS  # B's chain leaves A's inside block 7 (tokens 28..31)
    own = -(-b.host_tokens // BS)
    assert b.host_hashes[:shared] == b.hashes[:shared]
    assert w.blocks_copied_out - copied_before == own - shared
    assert core.counters.swap_bytes_avoided == shared * 100
    drive(core, {"w0": w})
    ref_core, ref = make(retain=False)
    for req, prompt, out in ((b, b_prompt, 30), (c, c_prompt, 4)):
        assert req.output_ids == run_one(ref_core, ref, prompt, out=out).output_ids
