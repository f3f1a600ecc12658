"""Distributions, arrivals, priority schedules and workload building (no server)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import statistics

import pytest

from client.loadgen.arrivals import arrival_times
from client.loadgen.dists import parse_dist
from client.loadgen.priorities import make_schedule
from client.loadgen.traces import TOKEN_HI, TOKEN_LO, TraceError
from client.loadgen.workloads import WorkloadSpec, build_workload


def test_dists_parse_and_sample():
    rng = random.Random(1)
    assert parse_dist("64").sample_int(rng) == 64
    assert str(parse_dist("lognormal:80,1")) == "lognormal:80,1"
    u = parse_dist("uniform:2,4")
    assert all(2 <= u.sample(rng) <= 4 for _ in range(100)) and u.mean == 3
    geom = [parse_dist("geom:5.5").sample_int(rng) for _ in range(20_000)]
    assert min(geom) == 1 and statistics.mean(geom) == pytest.approx(5.5, rel=0.03)
    logn = [parse_dist("lognormal:80,1.0").sample(rng) for _ in range(20_000)]
    assert statistics.mean(logn) == pytest.approx(80, rel=0.05)
    assert parse_dist("exp:0").sample(rng) == 0.0
    assert parse_dist("geom:1").sample_int(rng) == 1


@pytest.mark.parametrize(
    "text", ["zipf:1", "uniform:1", "uniform:5,1", "exp:-1", "lognormal:0,1", "geom:0.5", "x:y"]
)
def test_bad_dists(text):
    with pytest.raises(ValueError, match="distribution"):
        parse_dist(text)


def test_arrivals_poisson_and_gamma():
    times = arrival_times("poisson", rate=50, rng=random.Random(0), limit_s=200, max_count=10**6)
    assert len(times) == pytest.approx(10_000, rel=0.05)
    assert times == sorted(times) and times[-1] < 200
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, abs=0.05)
    bursty = arrival_times(
        "gamma", rate=50, rng=random.Random(0), limit_s=200, max_count=10**6, burstiness=3.0
    )
    gaps = [b - a for a, b in itertools.pairwise(bursty)]
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(3.0, rel=0.15)
    assert len(arrival_times("poisson", rate=50, rng=random.Random(0), limit_s=9, max_count=7)) == 7
    with pytest.raises(ValueError):
        arrival_times("trace", rate=1, rng=random.Random(0), limit_s=1, max_count=1)


def test_priority_patterns():
    rng = random.Random(0)
    kw = {"levels": 3, "interval_s": 2.0, "duration_s": 20.0, "stay": 0.7, "rng": rng}
    assert make_schedule("none", ["a"], **kw) is None
    markov = make_schedule("markov", ["a", "b"], **kw)
    assert markov is not None
    for row in markov.levels.values():
        assert len(row) == 10 and all(0 <= v < 3 for v in row)
        assert all(abs(b - a) <= 1 for a, b in itertools.pairwise(row))  # one step
    assert markov.at("a", 0.0) == markov.levels["a"][0]
    assert markov.at("a", 5.0) == markov.levels["a"][2] and markov.at("zz", 1.0) == 0
    assert markov.at("a", 999.0) == markov.levels["a"][-1]
    changes = markov.changes()
    assert changes == sorted(changes) and all(t > 0 for t, _, _ in changes)
    rand = make_schedule("random", ["a"], **{**kw, "duration_s": 200.0})
    assert rand is not None and set(rand.levels["a"]) == {0, 1, 2}
    with pytest.raises(ValueError):
        make_schedule("markov", ["a"], **{**kw, "levels": 1})


def test_multiturn_is_deterministic_and_fits_the_context():
    spec = WorkloadSpec("multiturn", seed=7, duration_s=60, rate=2.0, max_model_len=512)
    w = build_workload(spec)
    assert w == build_workload(spec)
    assert w != build_workload(WorkloadSpec("multiturn", seed=8, duration_s=60, rate=2.0))
    assert 80 <= len(w.sessions) <= 160
    for s in w.sessions:
        assert s.tenant == s.session_id  # one tenant per conversation by default
        assert s.turns[0].think_s == 0.0
        context = 0
        for t in s.turns:
            context += len(t.message)
            assert context <= spec.prompt_cap and context + t.max_tokens <= 512
            context += t.max_tokens
            assert all(TOKEN_LO <= tok < TOKEN_HI for tok in t.message)
    assert any("ended early" in n for n in w.notes) and any("clipped" in n for n in w.notes)
    grouped = build_workload(WorkloadSpec("multiturn", duration_s=10, tenants=2))
    assert {s.tenant for s in grouped.sessions} == {"tenant-0", "tenant-1"}


def test_multiturn_tenants_carry_a_seeded_priority_schedule():
    spec = WorkloadSpec(
        "multiturn",
        seed=3,
        duration_s=20,
        rate=4.0,
        tenants=3,
        priority_pattern="markov",
        priority_levels=2,
        priority_interval_s=2.0,
        markov_stay=0.5,
    )
    w = build_workload(spec)
    assert w.priorities is not None and w.priorities == build_workload(spec).priorities
    assert set(w.priorities.levels) == set(w.tenants) == {"tenant-0", "tenant-1", "tenant-2"}
    assert all(len(row) == 10 and set(row) <= {0, 1} for row in w.priorities.levels.values())
    assert w.priorities.changes()  # 27 chances to flip at P 0.5
    assert any(n.startswith("priorities: markov, 2 levels") for n in w.notes)
    other = build_workload(dataclasses.replace(spec, seed=4))
    assert other.priorities != w.priorities
    assert build_workload(WorkloadSpec("multiturn", duration_s=5, tenants=2)).priorities is None


def test_multiturn_defaults_are_sharegpt_like():
    spec = WorkloadSpec(
        "multiturn", duration_s=300, max_model_len=100_000, max_prompt_tokens=99_000
    )
    w = build_workload(spec)
    turns = [len(s.turns) for s in w.sessions]
    assert statistics.mean(turns) == pytest.approx(5.5, rel=0.15)
    assert not any("clipped" in n or "ended early" in n for n in w.notes)


def test_fairness_tenants_rates_sizes_and_priorities():
    spec = WorkloadSpec(
        "fairness", duration_s=50, rate=30, priority_pattern="random", priority_interval_s=5
    )
    w = build_workload(spec)
    assert w.tenants == ("tenant-0", "tenant-1", "tenant-2")
    counts = [sum(s.tenant == t for s in w.sessions) for t in w.tenants]
    assert counts[0] < counts[1] < counts[2]  # rates 1:2:3 of 30/s
    assert sum(counts) == pytest.approx(1500, rel=0.1)
    sizes = {s.tenant: (len(s.turns[0].message), s.turns[0].max_tokens) for s in w.sessions}
    assert sizes == {"tenant-0": (64, 96), "tenant-1": (128, 64), "tenant-2": (192, 32)}
    assert [s.arrival_s for s in w.sessions] == sorted(s.arrival_s for s in w.sessions)
    assert w.priorities is not None and w.priorities.interval_s == 5
    custom = build_workload(
        WorkloadSpec(
            "fairness",
            tenants=2,
            duration_s=5,
            max_requests=7,
            tenant_rates=(1.0, 9.0),
            tenant_prompt_lens=("16", "uniform:8,9"),
            tenant_output_lens=("4", "5"),
            length_scale=2.0,
        )
    )
    assert len(custom.sessions) == 7 and custom.planned_requests == 7
    assert {len(s.turns[0].message) for s in custom.sessions if s.tenant == "tenant-0"} <= {32}
    assert any("scaled by 2" in n for n in custom.notes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workload": "nope"}, "workload must be"),
        ({"duration_s": 0}, "duration_s"),
        ({"max_requests": 0}, "max_requests"),
        ({"rate": -1.0}, "rate"),
        ({"time_scale": 0}, "time_scale"),
        ({"length_scale": 0.0}, "length_scale"),
        ({"max_prompt_tokens": 4096}, "max_prompt_tokens must be in"),
        ({"max_model_len": 1}, "max_model_len"),
        ({"tenants": 0}, "tenants must be"),
        ({"tenant_rates": (1.0,)}, "tenant_rates lists 1 values for 3"),
        ({"tenant_prompt_lens": ("1", "2", "bad:1")}, "distribution"),
        ({"turns": "geom:0"}, "distribution"),
        ({"arrivals": "trace"}, "needs a trace workload"),
        ({"priority_pattern": "sine"}, "priority pattern"),
    ],
)
def test_impossible_specs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkloadSpec(**{"workload": "fairness", **kwargs})


def test_azure_replay_scales_times_and_lengths(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:00:00.0000000,100,10\n"
        "2023-11-16 18:00:02.0000000,3000,50\n"
        "2023-11-16 18:00:04.0000000,40,2000\n"
        "2023-11-16 18:00:30.0000000,40,20"
    )
    spec = WorkloadSpec(
        "azure-code", trace=path, duration_s=10, time_scale=0.5, length_scale=0.5, seed=1
    )
    w = build_workload(spec)
    assert [s.arrival_s for s in w.sessions] == [0.0, 1.0, 2.0]  # the 4th falls at 15 s
    assert [(len(s.turns[0].message), s.turns[0].max_tokens) for s in w.sessions] == [
        (50, 5),
        (1500, 25),
        (20, 512),  # output 1000 after scaling, clipped to the default cap of 2048 / 4
    ]
    assert w.tenants == ("azure-code",)
    notes = " | ".join(w.notes)
    assert "scaled by 0.5" in notes and "times x0.5" in notes and "1 outputs clipped" in notes
    offset = build_workload(WorkloadSpec("azure-code", trace=path, trace_offset_s=2))
    assert [s.arrival_s for s in offset.sessions] == [0.0, 2.0, 28.0]
    poisson = build_workload(
        WorkloadSpec("azure-code", trace=path, arrivals="poisson", rate=5, duration_s=10)
    )
    assert len(poisson.sessions) == 4  # the trace's lengths, synthetic times


def test_mooncake_replay_keeps_prefix_sharing(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 512, "hash_ids": [1, 2]},
        {"timestamp": 500, "input_length": 1500, "output_length": 16, "hash_ids": [1, 2, 3]},
        {"timestamp": 900, "input_length": 100, "output_length": 16, "hash_ids": [9]},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    w = build_workload(WorkloadSpec("mooncake", trace=path, duration_s=5, max_prompt_tokens=80))
    a, b, c = (s.turns[0] for s in w.sessions)
    assert len(a.message) == 64 and a.max_tokens == 32  # 1/16 by default
    assert len(b.message) == 80  # 94 after scaling, clipped to --max-prompt-tokens 80
    assert b.message[:64] == a.message and c.message[:6] != a.message[:6]
    assert any("blocks of 32 tokens" in n for n in w.notes)
    assert any("1 prompts clipped to 80" in n for n in w.notes)


def test_missing_trace_is_a_trace_error(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        build_workload(WorkloadSpec("mooncake", trace=tmp_path / "gone.jsonl"))
