"""Cache-aware placement (scheduler_svc/placement.py): its rules as functions, and through the
core with two fake workers: a shared-prefix stream lands where its prefix is cached, fairness is
never inverted beyond the margin, an idle or unsaturated worker still takes work, and waits are
bounded. ``step``/``drive`` check the core's integrity after every step; outputs are the fake's
greedy continuation, with placement on or off."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_fakes import drive, step
from test_core_device_cache import expected, make, submit

from scheduler_svc.placement import WorkerLoad, better_elsewhere, locality_order
from scheduler_svc.request import FinishReason, Request

DOC = 24  # tokens of each shared document: 6 full blocks of 4
DOCS = [[(31 * d + 7 * i + 1) % 200 for i in range(DOC)] for d in range(6)]


def ask(doc: int, k: int) -> list[int]:
    return [*DOCS[doc], 200 + k % 40, 201, 202]


def warm(core, fakes, wid: str, prompt: list[int], **kw) -> Request:
    """Serves `prompt` on `wid` alone, so its blocks are cached there."""
    req = submit(core, prompt, **kw)
    while not req.is_finished:
        assert step(core, wid, fakes[wid]) is not None
    assert req.worker_id == wid
    return req


# ----------------------------------------------------------- the rules as functions


def _r(seq: int, counter: float, saved: int, waits: int = 0):
    return SimpleNamespace(seq=seq, counter=counter, saved=saved, locality_waits=waits)


def test_locality_reorders_only_near_ties_and_due_requests_keep_their_rank():
    ranked = [_r(0, 0, 0), _r(1, 5, 8), _r(2, 9, 4, waits=3), _r(3, 20, 0), _r(4, 22, 16)]
    order = locality_order(
        ranked,  # type: ignore[arg-type]
        near_tie=lambda head, r: r.counter <= head.counter + 10,
        saved=lambda r: r.saved,
        due=lambda r: r.locality_waits >= 3,
    )
    # Band [0, 1, 2] (within 10 of 0): 2 is due, then most saved first; band [3, 4] likewise.
    assert [r.seq for r in order] == [2, 1, 0, 4, 3]


def test_a_longer_match_elsewhere_wins_only_when_its_prefill_is_done_sooner_there():
    idle = WorkerLoad(prefill_tokens=0, decodes=0, free_seqs=4, free_blocks=100)
    kw = {"tokens_here": 600, "blocks_there": 10, "budget": 512}
    assert better_elsewhere(idle, WorkerLoad(0, 0, 4, 100), tokens_there=40, **kw)
    # A short shared prefix is not worth waiting a step for.
    assert not better_elsewhere(idle, WorkerLoad(0, 0, 4, 100), tokens_there=300, **kw)
    # A hit behind a long queue loses to an idle worker.
    assert not better_elsewhere(idle, WorkerLoad(2000, 0, 4, 100), tokens_there=40, **kw)
    # Decodes slow a worker's prefill: 500 of 512 tokens a step go to them.
    assert not better_elsewhere(idle, WorkerLoad(0, 500, 4, 100), tokens_there=40, **kw)
    # Saturated: no batch slot, or not the blocks.
    assert not better_elsewhere(idle, WorkerLoad(0, 0, 0, 100), tokens_there=40, **kw)
    assert not better_elsewhere(idle, WorkerLoad(0, 0, 4, 9), tokens_there=40, **kw)
    # Never for load alone: the same tokens there are no reason to wait.
    assert not better_elsewhere(WorkerLoad(5000, 0, 4, 100), idle, tokens_there=600, **kw)


# ------------------------------------------------------------- through the core

SMALL = {"blocks": 40, "max_batched_tokens": 8, "max_prefill_chunk": 8}


def stream(*, locality: bool):
    """Documents 0-2 cached on w0, 3-5 on w1; then a stream asking about all of them, one new
    request per round of steps."""
    core, fakes = make(workers=("w0", "w1"), locality_max_waits=8 if locality else 0, **SMALL)
    for d in range(6):
        warm(core, fakes, "w0" if d < 3 else "w1", ask(d, 0))
    base = core.counters.device_hit_tokens
    reqs = []
    for k in range(1, 31):
        reqs.append(submit(core, ask(k % 6, k), out=4))
        step(core, "w0", fakes["w0"])
        step(core, "w1", fakes["w1"])
    drive(core, fakes)
    for r in reqs:
        assert r.output_ids == expected(r.prompt_ids, 4)
    return core, reqs, core.counters.device_hit_tokens - base


def test_a_shared_prefix_stream_lands_on_the_worker_that_holds_it():
    core, reqs, hits = stream(locality=True)
    home = {r.request_id: ("w0" if (i + 1) % 6 < 3 else "w1") for i, r in enumerate(reqs)}
    at_home = sum(r.worker_id == home[r.request_id] for r in reqs)
    assert at_home >= 0.9 * len(reqs)
    assert core.counters.locality_placements > 0 and core.counters.locality_deferrals > 0
    _, _, hits_without = stream(locality=False)
    assert hits > hits_without
    assert hits >= 0.9 * len(reqs) * DOC  # nearly every document served from the device
    stats = core.stats().counters
    assert stats.locality_placements == core.counters.locality_placements
    away = len(reqs) - at_home
    assert stats.locality_fallbacks == core.counters.locality_fallbacks <= away


def test_placement_is_off_without_the_device_cache():
    core, fakes = make(cache=False, workers=("w0", "w1"), **SMALL)
    warm(core, fakes, "w1", ask(0, 0))
    req = submit(core, ask(0, 1))
    step(core, "w0", fakes["w0"])
    assert req.worker_id == "w0"
    drive(core, fakes)
    assert core.counters.locality_deferrals == core.counters.locality_placements == 0


def fair(margin: float):
    """VTC on one worker, one request admitted per step: tenant a has its document cached and
    has been served 27 + 6 * 2 = 39; b arrives first with a miss."""
    core, fakes = make(policy="vtc", max_num_seqs=1, preempt_margin=margin)
    warm(core, fakes, "w0", ask(0, 0), tenant="a")
    b = submit(core, ask(1, 1), tenant="b")
    a = submit(core, ask(0, 2), tenant="a")
    step(core, "w0", fakes["w0"])
    return core, fakes, a, b


def test_within_the_margin_the_cached_request_goes_first():
    core, fakes, a, b = fair(margin=100)
    assert a.worker_id == "w0" and b.worker_id is None
    assert core.counters.locality_placements == 1 and b.locality_waits == 1
    drive(core, fakes)
    assert a.output_ids == expected(a.prompt_ids, 6) and b.output_ids == expected(b.prompt_ids, 6)


def test_fairness_is_never_inverted_beyond_the_margin():
    core, fakes, a, b = fair(margin=10)  # a leads b by 39 > 10: b first, cache or not
    assert b.worker_id == "w0" and a.worker_id is None
    assert core.counters.locality_placements == 0
    drive(core, fakes)
    assert a.device_cached_tokens == DOC  # a's hit waited for its turn, and still hit


def test_an_overtaken_request_waits_at_most_max_waits_admissions():
    core, fakes = make(policy="vtc", max_num_seqs=1, locality_max_waits=3)
    warm(core, fakes, "w0", ask(0, 0), tenant="a")
    miss = submit(core, ask(1, 1), tenant="a")  # first in rank, no hit
    hits = [submit(core, ask(0, k), tenant="a") for k in range(2, 8)]
    order = []
    while len(order) < 4:
        before = {r.seq for r in [miss, *hits] if r.worker_id}
        step(core, "w0", fakes["w0"])
        order += [r for r in [miss, *hits] if r.worker_id and r.seq not in before]
    assert order[:3] == hits[:3] and order[3] is miss  # due after 3 waits: its rank again
    drive(core, fakes)


def test_a_worker_takes_work_when_the_holder_is_saturated():
    core, fakes = make(workers=("w0", "w1"), max_num_seqs=1, **SMALL)
    warm(core, fakes, "w1", ask(0, 0))
    busy = submit(core, ask(1, 1), out=30)
    step(core, "w1", fakes["w1"])  # w1's only batch slot is taken
    assert busy.worker_id == "w1"
    req = submit(core, ask(0, 2))
    step(core, "w0", fakes["w0"])
    assert req.worker_id == "w0" and core.counters.locality_deferrals == 0
    assert core.counters.locality_fallbacks == 0  # never left: no locality gave way
    drive(core, fakes)
    assert req.output_ids == expected(req.prompt_ids, 6)


def test_an_idle_worker_takes_what_it_left_for_a_busy_one_rather_than_idle():
    core, fakes = make(workers=("w0", "w1"), **SMALL)
    warm(core, fakes, "w1", ask(0, 0))
    busy = submit(core, ask(1, 1), out=30)
    for _ in range(4):  # its prompt is prefilled: w1 only decodes, and its queue is short
        step(core, "w1", fakes["w1"])
    assert busy.decode_ready
    req = submit(core, ask(0, 2))
    assert step(core, "w0", fakes["w0"]) is not None  # w0 computes instead of idling
    assert req.worker_id == "w0" and req.device_cached_tokens == 0
    assert core.counters.locality_fallbacks == 1
    drive(core, fakes)
    assert req.output_ids == expected(req.prompt_ids, 6)


def test_a_busy_worker_leaves_a_request_for_the_holder_a_bounded_number_of_steps():
    core, fakes = make(workers=("w0", "w1"), locality_max_waits=3, **SMALL)
    warm(core, fakes, "w1", ask(0, 0))
    own = submit(core, ask(2, 1), out=30)
    step(core, "w0", fakes["w0"])  # w0 is busy with its own request
    req = submit(core, ask(0, 2))
    steps = 0
    while req.worker_id is None:  # w1 (idle, holding the prefix) never plans in this test
        step(core, "w0", fakes["w0"])
        steps += 1
    # Two steps own's prefill takes the whole budget; then left 3 times, then due.
    assert req.worker_id == "w0" and steps == 2 + 3 + 1
    assert core.counters.locality_deferrals == 3 and own.worker_id == "w0"
    assert core.counters.locality_fallbacks == 1  # due: it computes its prefix here
    drive(core, fakes)
    assert req.output_ids == expected(req.prompt_ids, 6)


def test_an_idle_worker_takes_a_request_that_waited_before_though_the_holder_is_idle():
    core, fakes = make(workers=("w0", "w1"), **SMALL)
    warm(core, fakes, "w1", ask(0, 0))
    own = submit(core, ask(2, 1), out=2)
    step(core, "w0", fakes["w0"])
    req = submit(core, ask(0, 2))
    while not own.is_finished:  # w0 is busy and leaves req for w1 (which never plans here)
        step(core, "w0", fakes["w0"])
    waited = core.counters.locality_deferrals
    assert waited > 0 and req.worker_id is None
    step(core, "w0", fakes["w0"])  # now idle: it takes req rather than idle, long before due
    assert req.worker_id == "w0" and core.counters.locality_deferrals == waited < 8
    assert core.counters.locality_fallbacks == 1
    drive(core, fakes)
    assert req.output_ids == expected(req.prompt_ids, 6)


def test_no_admission_goes_before_a_waiting_tenant_more_than_the_margin_behind():
    margin = 30.0
    core, fakes = make(policy="vtc", max_num_seqs=2, preempt_margin=margin, **SMALL)
    warm(core, fakes, "w0", ask(0, 0), tenant="a")
    reqs: list[Request] = []
    placed_early = 0
    for k in range(1, 41):
        if k % 2:
            reqs.append(submit(core, ask(0, k), tenant="a", out=3))  # hits
        else:
            reqs.append(submit(core, ask(1 + k % 5, k), tenant="b", out=3))  # misses
        counters = {t: core.policy.counter(t) for t in ("a", "b")}
        waiting = [r for r in reqs if r.worker_id is None]
        step(core, "w0", fakes["w0"])
        admitted = [r for r in waiting if r.worker_id is not None]
        left = [r for r in waiting if r.worker_id is None]
        for r in admitted:
            for w in left:
                assert counters[r.tenant] <= counters[w.tenant] + margin
                placed_early += w.seq < r.seq
    drive(core, fakes)
    assert placed_early > 0  # locality did reorder, within the margin
    assert all(r.output_ids == expected(r.prompt_ids, 3) for r in reqs)


PLACE_OPS = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 5), st.integers(0, 3), st.sampled_from("ab")),
    st.tuples(st.just("step"), st.sampled_from(["w0", "w1"]), st.integers(1, 6)),
    st.tuples(st.just("cancel"), st.integers(0, 40)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(PLACE_OPS, max_size=40),
    policy=st.sampled_from(["vtc", "priority", "fcfs"]),
    max_waits=st.sampled_from([0, 1, 8]),
)
def test_random_streams_over_two_workers_drain_with_identical_outputs(ops, policy, max_waits):
    core, fakes = make(
        workers=("w0", "w1"),
        policy=policy,
        locality_max_waits=max_waits,
        preempt_margin=20,
        max_num_seqs=3,
        **SMALL,
    )
    reqs: list[Request] = []
    for op in ops:
        if op[0] == "submit":
            _, doc, extra, tenant = op
            reqs.append(submit(core, ask(doc, len(reqs))[: DOC + extra], tenant=tenant, out=3))
        elif op[0] == "step":
            for _ in range(op[2]):
                step(core, op[1], fakes[op[1]])
        elif reqs:
            core.cancel(reqs[op[1] % len(reqs)].request_id)
        core.check_integrity()
    drive(core, fakes)
    for r in reqs:
        want = expected(r.prompt_ids, 3)
        assert r.output_ids == (
            want if r.finish_reason is not FinishReason.CANCELLED else want[: len(r.output_ids)]
        )
    for slot in core.workers.values():
        assert not slot.allocator.owners()
