"""Fetch or compute (scheduler_svc/fetch_cost.py): the pure decision, and the core declining a
host hit that costs more to fetch than to prefill (same tokens either way)."""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import FakeHost, FakeWorker, drive

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.fetch_cost import (
    NOT_MEASURED,
    DeviceCosts,
    HostFetch,
    count_runs,
    fetch_pays,
    fetch_seconds,
    mean_costs,
    prefill_seconds,
)
from scheduler_svc.policy import make_policy
from scheduler_svc.request import GenerationLimits, Sampling, Status
from scheduler_svc.workers import WorkerInfo

BS = 4
# A fast GPU-like device: 1 ms per copy, 10 GB/s; 20k prefill tokens/s.
GPU = DeviceCosts(prefill_tokens_per_s=20_000, copy_latency_s=1e-3, copy_bytes_per_s=10e9)
# A cheap model: prefill 1M tokens/s, copies 50 us and 1 GB/s.
CHEAP = DeviceCosts(prefill_tokens_per_s=1e6, copy_latency_s=50e-6, copy_bytes_per_s=1e9)


def decide(costs, tokens, blocks, runs=1, block_bytes=1 << 20, rtt=0.0, mode=HostFetch.AUTO):
    return fetch_pays(
        mode,
        costs,
        num_tokens=tokens,
        num_blocks=blocks,
        num_runs=runs,
        block_bytes=block_bytes,
        round_trip_s=rtt,
    )


def test_the_estimates_add_up():
    assert fetch_seconds(GPU, num_blocks=10, num_runs=2, block_bytes=10**6, round_trip_s=0.5) == (
        pytest.approx(0.5 + 2e-3 + 10 * 1e-4)
    )
    assert prefill_seconds(GPU, 2000) == pytest.approx(0.1)


def test_a_long_prefix_is_fetched_where_prefill_is_dear():
    # 64 blocks of 16 tokens, 1 MiB each: ~7.7 ms to copy in one run, 51 ms to prefill.
    assert decide(GPU, tokens=1024, blocks=64)


def test_a_short_prefix_is_computed_when_the_round_trip_dominates():
    # One block: 0.8 ms of prefill against a 1 ms copy latency plus a 1 ms round trip.
    assert not decide(GPU, tokens=16, blocks=1, rtt=1e-3)


def test_on_a_cheap_model_fetching_never_pays():
    assert not decide(CHEAP, tokens=1024, blocks=64)


def test_many_runs_cost_their_latencies():
    assert decide(GPU, tokens=1024, blocks=64, runs=1)
    assert not decide(GPU, tokens=1024, blocks=64, runs=64)  # 64 ms of latencies alone


def test_unmeasured_costs_fetch_and_the_flag_overrides_everything():
    assert decide(None, tokens=16, blocks=1)
    assert decide(DeviceCosts(), tokens=16, blocks=1)
    assert not decide(GPU, tokens=1024, blocks=64, mode=HostFetch.NEVER)
    assert decide(CHEAP, tokens=1024, blocks=64, mode=HostFetch.ALWAYS)


def test_mean_costs_skip_workers_that_did_not_measure():
    assert mean_costs([DeviceCosts()]) is None
    mean = mean_costs([GPU, DeviceCosts(), CHEAP])
    assert mean is not None
    assert mean.prefill_tokens_per_s == pytest.approx((20_000 + 1e6) / 2)
    assert mean.copy_bytes_per_s == pytest.approx((10e9 + 1e9) / 2)


def test_runs_are_counted_over_contiguous_block_ids():
    assert count_runs([]) == 0
    assert count_runs([3, 4, 5]) == 1
    assert count_runs([3, 4, 9, 10, 2]) == 3


PROMPT = [(7 * i) % 200 for i in range(30)]


def make(host_fetch="auto", costs=NOT_MEASURED):
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(preemption="swap", min_swap_tokens=1, retain=True, host_fetch=host_fetch),
        make_policy("fcfs"),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
        model_fingerprint="m",
        secret=b"s",
    )
    info = WorkerInfo(
        "w0", num_blocks=64, block_size=BS, block_bytes=1 << 20, max_model_len=4096, costs=costs
    )
    core.add_worker(info)
    return core, {"w0": FakeWorker(info, FakeHost())}


def run(core, fakes, retain=None):
    req = core.submit(
        prompt_ids=list(PROMPT),
        sampling=Sampling(),
        limits=GenerationLimits(max_tokens=6),
        tenant="t",
        retain_ttl_s=retain,
    )
    status = req.status
    drive(core, fakes)
    return req, status


@pytest.mark.parametrize(
    ("host_fetch", "costs", "fetched"),
    [
        ("auto", CHEAP, False),  # fetching 7 blocks of 1 MiB: 7 ms; prefilling 28 tokens: 28 us
        ("auto", DeviceCosts(prefill_tokens_per_s=100, copy_bytes_per_s=10e9), True),
        ("always", CHEAP, True),
        ("never", DeviceCosts(), False),
    ],
)
def test_a_hit_is_fetched_only_when_it_pays_with_identical_tokens(host_fetch, costs, fetched):
    core, fakes = make(host_fetch, costs)
    first, _ = run(core, fakes, retain=0.0)
    second, status = run(core, fakes)
    assert second.output_ids == first.output_ids
    assert (status is Status.SWAPPED) is fetched
    assert second.cached_prompt_tokens == (28 if fetched else 0)
    assert core.counters.host_hits_declined == (0 if fetched else 1)
    assert core.counters.host_declined_tokens == (0 if fetched else 28)
    assert core.counters.swap_ins == (1 if fetched else 0)


def test_the_store_round_trip_is_averaged_and_reported():
    core, _ = make()
    core.note_store_round_trip(0.002)
    assert core.store_round_trip_s == 0.002
    core.note_store_round_trip(0.012)
    assert core.store_round_trip_s == pytest.approx(0.003)
    assert core.stats().store_round_trip_s == pytest.approx(0.003)
    assert core.stats().workers[0].prefill_tokens_per_s == 0.0
