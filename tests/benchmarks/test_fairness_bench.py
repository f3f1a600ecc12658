"""The pure parts of benchmarks/fairness.py: Jain's index, backlogged stretches, the service gap
between backlogged tenants and VTC's bound, on small hand-made runs whose answers are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from fairness import backlogged, max_service_gap, overlap, service_events, vtc_bound

from client.loadgen.stats import RequestRecord, Status, Weights, jain_index

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
