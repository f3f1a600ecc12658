"""The runner must not measure its own client: no client-side queue by default, per-tenant caps
that keep one tenant's backlog from holding another's requests, and warnings when requests wait
in the client or are issued behind schedule."""

from __future__ import annotations

import time

from client.loadgen.runner import RunConfig, Runner
from client.loadgen.stats import RequestRecord, Status
from client.loadgen.summary import summarize
from client.loadgen.workloads import WorkloadSpec, build_workload

HEAVY, LIGHT = "tenant-0", "tenant-1"


def heavy_and_light():
    """tenant-0 sends 60 long requests/s (a backlog on the fake), tenant-1 5 short ones/s."""
    spec = WorkloadSpec(
        "fairness",
        seed=3,
        duration_s=0.6,
        tenants=2,
        tenant_rates=(60.0, 5.0),
        tenant_prompt_lens=("8", "8"),
        tenant_output_lens=("20", "2"),
    )
    w = build_workload(spec)
    assert {s.tenant for s in w.sessions} == {HEAVY, LIGHT}
    return w


def waits(records: list[RequestRecord] | tuple[RequestRecord, ...], tenant: str) -> list[float]:
    return [q for r in records if r.tenant == tenant and (q := r.queued_s) is not None]


async def test_no_client_queue_by_default(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.01  # a heavy request takes 0.2 s: several run at once
    warnings: list[str] = []
    w = heavy_and_light()
    result = await Runner(w, RunConfig(addr, warmup_requests=0), on_warning=warnings.append).run()
    assert all(r.status is Status.OK for r in result.records)
    assert fake.max_running > 2  # the backlog is the server's to order
    assert max(waits(result.records, HEAVY)) < 0.05 and max(waits(result.records, LIGHT)) < 0.05
    assert not any("waited in the client" in n for n in result.notes)
    assert not any("concurrency slot" in m for m in warnings)


async def test_a_per_tenant_cap_does_not_hold_the_light_tenant(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.01
    warnings: list[str] = []
    cfg = RunConfig(addr, warmup_requests=0, tenant_concurrency=1, drain_timeout_s=0.3)
    result = await Runner(heavy_and_light(), cfg, on_warning=warnings.append).run()
    assert fake.max_running <= 2  # one per tenant
    assert max(waits(result.records, HEAVY)) > 0.1  # the heavy tenant queues behind itself ...
    assert max(waits(result.records, LIGHT)) < 0.05  # ... and the light one is not held by it
    [note] = [n for n in result.notes if "waited in the client" in n]
    assert note.startswith("WARNING:")
    assert [m for m in warnings if "concurrency slot" in m] == [warnings[0]]  # said once


async def test_a_shared_cap_below_the_backlog_is_reported(lg_fake):
    addr, fake = lg_fake
    fake.token_delay_s = 0.01
    warnings: list[str] = []
    w = heavy_and_light()
    result = await Runner(
        w,
        RunConfig(addr, warmup_requests=0, concurrency=2, drain_timeout_s=0.3),
        on_warning=warnings.append,
    ).run()
    assert fake.max_running <= 2
    assert max(waits(result.records, LIGHT)) > 0.05  # FCFS in the client: light waits for heavy
    s = summarize(result.records, wall_s=result.wall_s, tenants=w.tenants)
    longest = max(q for r in result.records if (q := r.queued_s) is not None)
    assert s.client_queued >= 1 and s.max_client_queue_s == longest
    [note] = [n for n in result.notes if "waited in the client" in n]
    assert f"{s.client_queued} requests waited" in note and f"longest {longest:.2f} s" in note
    assert sum("concurrency slot" in m for m in warnings) == 1


async def test_falling_behind_the_schedule_is_reported(lg_fake):
    addr, _ = lg_fake
    w = build_workload(
        WorkloadSpec("fairness", duration_s=0.5, rate=40.0, tenant_output_lens=("2", "2", "2"))
    )
    warnings: list[str] = []

    def stall(_live: object) -> None:
        time.sleep(0.12)  # a progress callback that blocks the runner's event loop

    runner = Runner(
        w,
        RunConfig(addr, warmup_requests=0),
        on_progress=stall,
        on_warning=warnings.append,
        progress_interval_s=0.01,
    )
    result = await runner.run()
    s = summarize(result.records, wall_s=result.wall_s, tenants=w.tenants)
    assert s.behind_schedule >= 1 and s.max_lag_s > 0.05
    [note] = [n for n in result.notes if "behind their scheduled arrival" in n]
    assert f"{s.behind_schedule} requests" in note
    assert sum("falling behind" in m for m in warnings) == 1
    assert all(r.lag_s <= (r.wait_s or 0) + 1e-9 for r in result.records)


def test_record_lag_and_queue():
    r = RequestRecord("r", "s", "t", 0, 0, scheduled_s=1.0, prompt_tokens=1, max_tokens=1)
    assert r.lag_s == 0.0 and r.queued_s is None
    r.issued_s, r.sent_s = 1.25, 2.0
    assert r.lag_s == 0.25 and r.queued_s == 0.75 and r.wait_s == 1.0
