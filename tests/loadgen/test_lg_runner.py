"""The runner against a fake scheduler: what it sends, bounds, failures, stops, priorities."""

from __future__ import annotations

import asyncio
import time

import pytest
from polling import eventually

from client.loadgen.runner import RunConfig, Runner, TargetError
from client.loadgen.stats import Status
from client.loadgen.summary import summarize
from client.loadgen.workloads import WorkloadSpec, build_workload
from fastswitch.deploy import free_port


def small_fairness(**kw):
    spec = {"duration_s": 0.4, "rate": 40.0, "tenant_output_lens": ("4", "4", "4"), **kw}
    return build_workload(WorkloadSpec("fairness", **spec))


async def test_runs_every_request_with_token_ids_tenants_and_ids(lg_fake):
    addr, fake = lg_fake
    w = small_fairness()
    result = await Runner(w, RunConfig(addr, warmup_requests=1)).run()
    assert len(result.records) == len(w.sessions) > 5
    assert all(r.status is Status.OK and r.output_tokens == 4 for r in result.records)
    assert result.stopped is None and result.before is not None and result.after is not None
    warm, *sent = fake.requests
    assert warm.tenant == "lg-warmup"
    assert [r.tenant for r in sent] == [s.tenant for s in w.sessions]
    assert [list(r.token_ids.ids) for r in sent] == [list(s.turns[0].message) for s in w.sessions]
    assert all(r.sampling.ignore_eos and r.request_id.startswith("lg-") for r in sent)
    assert len({r.request_id for r in sent}) == len(sent)
    s = summarize(
        result.records,
        wall_s=result.wall_s,
        tenants=w.tenants,
        before=result.before,
        after=result.after,
    )
    assert s.finished == len(sent) and s.server is not None
    assert s.server.finished == len(sent) and s.server.preemptions == 2 * len(sent)


async def test_turns_carry_the_whole_history(lg_fake):
    addr, fake = lg_fake
    spec = WorkloadSpec(
        "multiturn",
        duration_s=0.3,
        rate=10,
        turns="3",
        prompt_len="5",
        output_len="4",
        think_time="0",
        max_requests=6,
    )
    w = build_workload(spec)
    result = await Runner(w, RunConfig(addr, warmup_requests=0)).run()
    assert len(result.records) == 6
    by_session: dict[str, list[list[int]]] = {}
    for req in fake.requests:
        by_session.setdefault(req.tenant, []).append(list(req.token_ids.ids))
    session = w.sessions[0]
    prompts = by_session[session.tenant]
    reply = [65, 66, 67, 68]  # the fake's tokens
    assert prompts[0] == list(session.turns[0].message)
    assert len(prompts) >= 2
    assert prompts[1] == prompts[0] + reply + list(session.turns[1].message)
    assert [r.turn for r in result.records if r.session_id == session.session_id][:2] == [0, 1]


async def test_concurrency_bound_and_client_wait(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.005
    w = small_fairness(rate=60.0)
    result = await Runner(w, RunConfig(addr, concurrency=1, warmup_requests=0)).run()
    assert fake.max_running == 1
    waits = [r.wait_s for r in result.records if r.wait_s is not None]
    assert max(waits) > 0.005  # later arrivals waited for the slot, and it was counted


async def test_a_target_failing_mid_run_is_reported_not_fatal(lg_fake):
    addr, fake = lg_fake
    fake.fail_after = 5
    w = small_fairness(duration_s=2.0, rate=100.0)
    cfg = RunConfig(addr, warmup_requests=0, max_consecutive_failures=4)
    result = await Runner(w, cfg).run()
    statuses = [r.status for r in result.records]
    assert statuses.count(Status.OK) == 5
    assert statuses.count(Status.FAILED) >= 4
    assert result.stopped is not None and "4 requests in a row" in result.stopped
    assert all(
        "UNAVAILABLE" in (r.error or "") for r in result.records if r.status is Status.FAILED
    )
    assert len(result.records) < len(w.sessions)  # it stopped issuing


async def test_drain_timeout_cancels_what_still_runs(lg_fake):
    addr, fake = lg_fake
    fake.hang = True
    w = small_fairness(duration_s=0.2, rate=30.0)
    t0 = time.monotonic()
    result = await Runner(w, RunConfig(addr, warmup_requests=0, drain_timeout_s=0.2)).run()
    assert time.monotonic() - t0 < 3
    assert result.records and all(r.status is Status.CANCELLED for r in result.records)
    assert any("--drain-timeout" in n for n in result.notes)
    # the server learns of each cancel asynchronously
    await eventually(lambda: len(fake.cancelled) >= len(result.records), what="every cancel")
    assert fake.cancelled == {r.request_id for r in result.records}


async def test_stop_gives_a_partial_result(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.01
    w = small_fairness(duration_s=30.0, rate=20.0)
    seen: list = []
    runner = Runner(
        w, RunConfig(addr, warmup_requests=0), on_progress=seen.append, progress_interval_s=0.01
    )
    task = asyncio.ensure_future(runner.run())
    await eventually(lambda: any(live.done for live in seen), what="a finished request")
    runner.stop("interrupted")
    result = await asyncio.wait_for(task, 5)
    assert result.stopped == "interrupted" and result.wall_s < 10
    assert any(r.status is Status.OK for r in result.records)


async def test_priority_changes_reach_running_requests(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.02
    w = build_workload(
        WorkloadSpec(
            "fairness",
            duration_s=0.8,
            rate=20,
            priority_pattern="random",
            priority_interval_s=0.1,
            priority_levels=4,
            tenant_output_lens=("20", "20", "20"),
        )
    )
    assert w.priorities is not None
    result = await Runner(w, RunConfig(addr, warmup_requests=0)).run()
    assert fake.priorities, "no SetPriority reached the server"
    ids = {r.request_id for r in result.records}
    assert all(rid in ids and 0 <= level < 4 for rid, level in fake.priorities)
    sent = {r.request_id: r.priority for r in fake.requests}
    for r in result.records:  # each request starts at its tenant's level at send time
        assert sent[r.request_id] == r.priority
    assert any("moved to a new priority level" in n for n in result.notes)


async def test_chat_mode(lg_fake):
    addr, fake = lg_fake
    spec = WorkloadSpec(
        "multiturn",
        duration_s=0.2,
        rate=20,
        turns="2",
        prompt_len="3",
        output_len="2",
        think_time="0",
        max_requests=4,
    )
    w = build_workload(spec)
    stopped = await Runner(w, RunConfig(addr, warmup_requests=0, use_chat=True)).run()
    assert stopped.stopped is not None and "does not serve Chat" in stopped.stopped
    fake.chat_served = True
    result = await Runner(w, RunConfig(addr, warmup_requests=0, use_chat=True)).run()
    assert result.stopped is None and all(r.status is Status.OK for r in result.records)
    assert fake.chats[0].message == bytes(w.sessions[0].turns[0].message).decode()
    later = [c for c in fake.chats if c.conversation_id]  # later turns continue a conversation
    assert later and all(c.conversation_id.startswith("conv-") for c in later)


async def test_unreachable_target():
    cfg = RunConfig(f"127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    with pytest.raises(TargetError, match="no FastSwitch scheduler answers"):
        await Runner(small_fairness(), cfg).run()


def test_run_config_validation():
    with pytest.raises(ValueError, match="concurrency"):
        RunConfig("x", concurrency=0)
    with pytest.raises(ValueError, match="drain_timeout_s"):
        RunConfig("x", drain_timeout_s=-1)
