"""The pure parts of benchmarks/fairness.py: Jain's index, backlogged stretches, the service gap
between backlogged tenants and VTC's bound, on small hand-made runs whose answers are known; the
two workloads as built from their flags (deterministic from the seed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fairness import (
    PAPER_CONFIGS,
    backlog,
    backlogged,
    light_ttfts,
    max_service_gap,
    overlap,
    paper,
    parse_args,
    service_events,
    turn_lengths,
    vtc_bound,
    workload_bound,
)

from client.loadgen.stats import RequestRecord, ServerUsage, Status, Weights, jain_index
from client.loadgen.workloads import Session, Turn, Workload

W = Weights(prompt=1.0, output=2.0)


def rec(tenant: str, arrival: float, tokens: list[float], prompt: int = 10) -> RequestRecord:
    return RequestRecord(
        request_id=f"{tenant}-{arrival}",
        session_id=f"{tenant}-{arrival}",
        tenant=tenant,
        turn=0,
        priority=0,
        scheduled_s=arrival,
        prompt_tokens=prompt,
        max_tokens=len(tokens),
        token_times=list(tokens),
        status=Status.OK,
    )


def test_vtc_bound_is_twice_the_larger_of_prompt_and_batch_service():
    assert vtc_bound(1.0, 2.0, 128, 12288) == 2 * 2 * 12288
    assert vtc_bound(1.0, 2.0, 4096, 1000) == 2 * 4096
    assert vtc_bound(3.0, 0.5, 100, 100) == 600


def test_jain_index_of_equal_and_of_skewed_service():
    assert jain_index([5.0, 5.0]) == pytest.approx(1.0)
    assert jain_index([32.0, 8.0]) == pytest.approx(40**2 / (2 * (32**2 + 8**2)))
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


def test_a_tenant_is_backlogged_from_arrival_to_first_token_merged_and_clipped():
    records = [
        rec("a", 0.0, [1.0, 1.5]),
        rec("a", 0.5, [2.0]),  # overlaps the first: one stretch 0..2
        rec("a", 3.0, [4.0]),
        rec("a", 5.0, []),  # never served: backlogged to the end
        rec("b", 0.0, [0.2]),
    ]
    assert backlogged(records, "a", end_s=6.0) == [(0.0, 2.0), (3.0, 4.0), (5.0, 6.0)]
    assert backlogged(records, "a", end_s=3.5) == [(0.0, 2.0), (3.0, 3.5)]
    assert overlap([(0.0, 2.0), (3.0, 4.0)], [(1.0, 3.5)]) == [(1.0, 2.0), (3.0, 3.5)]


def test_service_events_carry_the_prompt_on_the_first_token():
    events = service_events([rec("a", 0.0, [1.0, 2.0], prompt=10)], "a", W)
    assert events == [(1.0, 12.0), (2.0, 2.0)]


def test_the_gap_counts_only_while_both_tenants_are_backlogged():
    # b is backlogged 0..10 (its one request never gets a token); a is backlogged 0..4
    # (its second request's first token at 4). Within 0..4 a received 12 + 2 + 12 = 26.
    records = [
        rec("a", 0.0, [1.0, 2.0], prompt=10),
        rec("a", 0.0, [4.0], prompt=10),
        rec("a", 5.0, [6.0, 7.0, 8.0], prompt=10),  # after a's backlog: not counted
        rec("b", 0.0, [], prompt=10),
    ]
    assert max_service_gap(records, ["a", "b"], W, end_s=10.0) == pytest.approx(26.0)


def test_the_gap_is_the_largest_swing_not_the_end_difference():
    # Both backlogged all along: a leads by 22 at t=2, b catches up and leads by 2 at t=5.
    records = [
        rec("a", 0.0, [1.0], prompt=20),
        rec("a", 0.0, [9.5]),  # keeps a backlogged to 9.5
        rec("b", 0.0, [3.0], prompt=22),
        rec("b", 0.0, [5.0], prompt=0),
        rec("b", 0.0, [9.0]),  # keeps b backlogged to 9
    ]
    gap = max_service_gap(records, ["a", "b"], W, end_s=10.0)
    # D = a - b: +22 at 1, -2 at 3, -4 at 5, -16 at 9: swing 22 - (-16) = 38.
    assert gap == pytest.approx(38.0)


def test_tenant_weights_divide_service_and_no_overlap_means_no_gap():
    records = [rec("a", 0.0, [1.0, 2.0], prompt=10), rec("b", 0.0, [3.0], prompt=0)]
    # a backlogged 0..1, b 0..3: within 0..1 a got 12, weighted 2 -> 6.
    assert max_service_gap(records, ["a", "b"], W, end_s=4.0, tenant_weights={"a": 2}) == 6.0
    apart = [rec("a", 0.0, [1.0]), rec("b", 2.0, [3.0])]
    assert max_service_gap(apart, ["a", "b"], W, end_s=4.0) is None


def test_a_prompt_taken_from_retained_kv_is_not_charged():
    r = rec("a", 0.0, [1.0], prompt=100)
    r.usage = ServerUsage(prompt_tokens=100, cached_prompt_tokens=90)
    assert service_events([r], "a", W) == [(1.0, 2.0 + 10.0)]
    r.usage = ServerUsage(prompt_tokens=100, cached_prompt_tokens=None)
    assert service_events([r], "a", W) == [(1.0, 2.0 + 100.0)]


def test_light_ttfts_count_the_requests_never_served_apart():
    records = [rec("a", 1.0, [1.5, 2.0]), rec("a", 2.0, []), rec("b", 0.0, [9.0])]
    assert light_ttfts(records, lambda r: r.tenant == "a") == ([0.5], 1)
    assert light_ttfts(records, lambda r: r.tenant == "c") == ([], 0)


def test_a_turns_prompt_is_its_history_and_the_bound_takes_the_longest():
    conv = Session("c", "a", 0.0, (Turn((1,) * 10, 5), Turn((1,) * 20, 7, 1.0)))
    single = Session("r", "b", 0.5, (Turn((1,) * 40, 2),))
    w = Workload("w", (conv, single), ("a", "b"), 10.0, 100)
    assert turn_lengths(w) == [(10, 15), (35, 42), (40, 42)]
    assert workload_bound(w, capacity_tokens=10_000, max_num_seqs=4) == vtc_bound(1, 2, 40, 168)
    assert workload_bound(w, capacity_tokens=100, max_num_seqs=4) == vtc_bound(1, 2, 40, 100)


def test_the_backlog_workload_is_two_tenants_of_fixed_requests():
    s = backlog(parse_args(["--duration", "5", "--rates", "40,10"]))
    counts = {t: sum(x.tenant == t for x in s.workload.sessions) for t in s.workload.tenants}
    assert counts["tenant-0"] > 2 * counts["tenant-1"] > 0
    assert {(len(x.turns[0].message), x.turns[0].max_tokens) for x in s.workload.sessions} == {
        (128, 64)
    }
    assert s.light(rec("tenant-1", 0.0, [])) and not s.light(rec("tenant-0", 0.0, []))
    assert [v.label for v in s.configs] == ["fcfs", "vtc-baseline", "vtc-vllm-v1", "vtc-fastswitch"]


def test_the_paper_workload_is_seeded_multiturn_with_changing_priorities():
    args = ["--duration", "10", "--tenants", "3", "--pattern", "random", "--levels", "2"]
    s = paper(parse_args(args))
    w = s.workload
    assert w == paper(parse_args(args)).workload
    assert w != paper(parse_args([*args, "--seed", "1"])).workload
    assert w.tenants == ("tenant-0", "tenant-1", "tenant-2")
    assert sum(len(x.turns) for x in w.sessions) > len(w.sessions)  # conversations, not requests
    assert w.priorities is not None and w.priorities.interval_s == 2.0
    assert all(len(row) == 5 and set(row) <= {0, 1} for row in w.priorities.levels.values())
    assert s.run.use_chat and s.run.drain_timeout_s == 0.0 and s.run.concurrency is None
    low, high = rec("tenant-0", 0.0, []), rec("tenant-0", 0.0, [])
    high.priority = 1
    assert s.light(low) and not s.light(high)
    assert s.configs == PAPER_CONFIGS
    assert {v.mode for v in s.configs if v.scheduler_args == ("--policy", "priority")} == {
        "vllm-baseline",
        "fastswitch",
    }
