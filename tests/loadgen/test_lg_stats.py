"""The arithmetic: percentiles, Jain's index, SLO attainment, service, summaries, ratios."""

from __future__ import annotations

import pytest

from client import RequestMetrics, Stats, TenantStats, WorkerStats
from client.loadgen.stats import (
    Percentiles,
    RequestRecord,
    Slo,
    Status,
    Weights,
    jain_index,
    percentile,
    service,
    service_timeline,
    slo_attainment,
)
from client.loadgen.summary import HEADLINE, headline, summarize
from fastswitch.deploy.compare import format_compare, medians, ratio


def rec(
    tenant: str = "a",
    times: tuple[float, ...] = (),
    *,
    status: Status = Status.OK,
    scheduled: float = 0.0,
    end: float | None = None,
    prompt: int = 10,
    server: RequestMetrics | None = None,
) -> RequestRecord:
    r = RequestRecord("r", "s", tenant, 0, 0, scheduled, prompt, 8)
    r.sent_s = scheduled
    r.token_times = list(times)
    r.status = status
    r.end_s = end if end is not None else (times[-1] if times else scheduled)
    r.server = server
    return r


def test_percentile_hand_computed():
    assert percentile([], 50) is None
    assert percentile([7.0], 99.9) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(v) for v in range(1, 11)], 95) == pytest.approx(9.55)  # 9 + .55
    assert percentile([float(v) for v in range(1, 12)], 99.9) == pytest.approx(10.99)
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([1.0, 2.0], 0) == 1.0 and percentile([1.0, 2.0], 100) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    p = Percentiles.of([1.0, 2.0, 3.0, 4.0])
    assert (p.count, p.mean, p.p50) == (4, 2.5, 2.5)
    assert p.p999 == pytest.approx(3.997)
    assert Percentiles.of([]) == Percentiles(0, None, None, None, None, None)


def test_jain_index_hand_computed():
    assert jain_index([5.0, 5.0, 5.0, 5.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25  # one gets everything: 1/n
    assert jain_index([1.0, 2.0, 3.0]) == pytest.approx(36 / 42)  # 6^2 / (3 * 14)
    assert jain_index([3.0]) == 1.0
    assert jain_index([]) is None and jain_index([0.0, 0.0]) is None
    with pytest.raises(ValueError):
        jain_index([1.0, -1.0])


def test_tokens_of_one_chunk_share_its_gap():
    r = rec(times=())
    r.add_tokens(1, 1.0)
    r.add_tokens(3, 1.6)
    r.add_tokens(0, 9.0)
    assert r.token_times == pytest.approx([1.0, 1.2, 1.4, 1.6])
    assert r.tbt_s == pytest.approx([0.2, 0.2, 0.2])
    first = rec(times=())
    first.add_tokens(2, 0.5)  # the first chunk brings two tokens: no gap between them
    assert first.token_times == [0.5, 0.5] and first.tbt_s == [0.0]


def test_latencies_count_from_the_scheduled_arrival():
    r = rec(times=(1.5, 1.7), scheduled=1.0, end=1.8)
    r.sent_s = 1.25  # waited for a client slot
    assert r.ttft_s == pytest.approx(0.5) and r.e2e_s == pytest.approx(0.8)
    assert r.wait_s == pytest.approx(0.25)
    assert rec(times=(1.0,), status=Status.FAILED).e2e_s is None


def test_slo_attainment_hand_computed():
    records = [
        rec(times=(0.1, 0.2, 0.3)),  # TTFT ok, mean TBT 0.1 misses
        rec(times=(0.5, 0.55)),  # TTFT misses, TBT 0.05 ok
        rec(status=Status.FAILED),  # misses both
        rec(status=Status.CANCELLED, end=0.1),  # cut off before the SLO passed: unknown
        rec(status=Status.CANCELLED, end=1.0),  # waited 1 s with no token: TTFT missed
        rec(times=(0.05, 0.1)),  # meets both
    ]
    a = slo_attainment(records, Slo(ttft_s=0.2, tbt_s=0.08))
    assert a.ttft == pytest.approx(2 / 5)
    assert a.tbt == pytest.approx(2 / 4)
    assert a.both == pytest.approx(1 / 5) and a.requests == 5
    assert a.tokens_within_tbt == pytest.approx(2 / 4)  # gaps .1 .1 .05 .05
    only_ttft = slo_attainment(records, Slo(ttft_s=0.2))
    assert only_ttft.tbt is None and only_ttft.both == pytest.approx(2 / 5)


def test_service_and_timeline():
    w = Weights()
    r = rec("a", times=(0.5, 1.5, 2.5), prompt=10)
    assert service(r, w) == 10 + 2 * 3
    assert service(r, w, until_s=1.0) == 10 + 2
    assert service(rec("a", times=()), w) == 0.0
    tl = service_timeline([r, rec("b", times=(2.2,), prompt=4)], ["a", "b", "c"], 3.0, w)
    assert tl.bin_s == pytest.approx(1.0)
    assert tl.tenants["a"] == pytest.approx([12.0, 2.0, 2.0])
    assert tl.tenants["b"] == pytest.approx([0.0, 0.0, 6.0])
    assert tl.tenants["c"] == [0.0, 0.0, 0.0]


def _stats(finished: int, preempt: int, out_bytes: int, tenant_tokens: int) -> Stats:
    return Stats(
        *(0, 0, 0, finished, 0, 0, preempt, preempt, preempt, 0, out_bytes, out_bytes, 5, 0),
        policy="vtc",
        mode="fastswitch",
        tenants=(TenantStats("a", 100.0, tenant_tokens, tenant_tokens, 0, 0, finished, 1.0),),
        workers=(WorkerStats("worker-0", "cpu", 64, 60, 0, finished * 10, 0.01, out_bytes, 0, 4),),
    )


def test_summarize_counts_throughput_fairness_and_server_deltas():
    metrics = RequestMetrics(ttft_s=0.01, tbt_s=(0.02,), queue_s=0.003, cached_prompt_tokens=4)
    records = [
        rec("a", times=(0.2, 0.4), server=metrics),
        rec("b", times=(0.3, 0.5, 0.7), server=metrics),
        rec("b", status=Status.FAILED),
        rec("c", times=(0.9,), status=Status.CANCELLED, end=1.0),
    ]
    records[2].error = "UNAVAILABLE: down"
    s = summarize(
        records,
        wall_s=2.0,
        tenants=["a", "b", "c", "d"],
        slo=Slo(ttft_s=0.25),
        before=_stats(3, 1, 100, 10),
        after=_stats(5, 4, 300, 25),
        fairness_window_s=0.6,
    )
    assert (s.issued, s.finished, s.failed, s.cancelled) == (4, 2, 1, 1)
    assert s.errors == {"UNAVAILABLE": 1}
    assert s.error_examples == {"UNAVAILABLE": "UNAVAILABLE: down"}
    assert s.requests_per_s == 1.0 and s.output_tokens == 6 and s.prompt_tokens == 30
    assert s.output_tokens_per_s == 3.0 and s.total_tokens_per_s == 18.0
    assert s.ttft.count == 3 and s.tbt.count == 3 and s.e2e.count == 2
    assert s.cached_prompt_tokens == 8 and s.server_queue.p50 == pytest.approx(0.003)
    by = {t.tenant: t for t in s.tenants}
    assert [t.tenant for t in s.tenants] == ["a", "b", "c", "d"]
    assert (by["a"].service, by["b"].service, by["c"].service, by["d"].service) == (14, 16, 12, 0)
    # by 0.6 s: a 10+4, b 10+4 (0.7 is later), c nothing yet, d nothing
    assert [by[t].window_service for t in "abcd"] == [14, 14, 0, 0]
    assert s.jain == pytest.approx(28**2 / (4 * (14**2 * 2)))
    assert s.max_service_gap == 14
    assert by["a"].server_prompt_tokens == 15 and by["a"].virtual_counter == 100.0
    assert by["b"].server_prompt_tokens is None  # the scheduler has not seen "b"
    srv = s.server
    assert srv is not None
    assert (srv.finished, srv.preemptions, srv.swap_out_bytes, srv.reuse_hit_tokens) == (
        2,
        3,
        200,
        0,
    )
    assert srv.workers[0].steps == 20 and srv.workers[0].swap_out_bytes == 200
    assert s.attainment is not None and s.attainment.ttft == pytest.approx(1 / 4)
    figures = headline(s)
    assert set(figures) == {key for key, *_ in HEADLINE}
    assert figures["ttft_p50"] == pytest.approx(300.0) and figures["preemptions"] == 3


def test_ratios_and_medians_and_compare_table():
    assert ratio(10.0, 30.0, "lower") == 3.0  # baseline latency 3x the first mode's
    assert ratio(12.0, 10.0, "higher") == 1.2  # first mode's throughput 1.2x
    assert ratio(1.0, None, "lower") is None and ratio(1.0, 2.0, None) is None
    assert ratio(0.0, 1.0, "lower") is None
    s1 = summarize([rec("a", times=(0.1, 0.2))], wall_s=1.0, tenants=["a"])
    s2 = summarize([rec("a", times=(0.3, 0.5))], wall_s=1.0, tenants=["a"])
    s3 = summarize([rec("a", times=(0.5, 0.6))], wall_s=1.0, tenants=["a"])

    class Run:
        def __init__(self, mode, summary):
            self.mode, self.summary = mode, summary

    runs = [Run("fastswitch", s1), Run("fastswitch", s3), Run("vllm-baseline", s2)]
    med = medians(runs, ["fastswitch", "vllm-baseline"])  # type: ignore[arg-type]
    assert med["fastswitch"]["ttft_p50"] == pytest.approx(300.0)  # median of 100 and 500
    table = format_compare(med, ["fastswitch", "vllm-baseline"], title="t")
    line = next(ln for ln in table.splitlines() if ln.strip().startswith("TTFT P50"))
    assert line.split()[-1] == "1.00x"  # 300 ms against 300 ms
    three = format_compare(
        {**med, "x": med["fastswitch"]}, ["fastswitch", "vllm-baseline", "x"], title="t"
    )
    assert "ratio vs vllm-baseline" in three and "ratio vs x" in three
    assert "ratio > 1: fastswitch better" in table
