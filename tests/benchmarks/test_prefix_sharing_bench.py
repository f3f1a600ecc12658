"""benchmarks/prefix_sharing.py: the trace replay keeps whole chains behind their tenant's system
block, the reuse bound on a hand-made workload, and a quick run end to end (three deployments):
one table per workload with every variant and ratio column, and hits counted in their tier."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from prefix_sharing import (
    BLOCK,
    VARIANTS,
    TraceReplay,
    chain_key,
    main,
    parse_args,
    reuse_bound,
    rows,
    trace_workload,
    variants,
)

from client.loadgen.traces import TraceRecord
from client.loadgen.workloads import Session, Turn, Workload

RECORDS = [  # chains by first hash id: 1 (three requests), 7, 9 (two), 4
    TraceRecord(0.0, 1024, 80, (1, 2)),
    TraceRecord(10.0, 512, 8, (7,)),
    TraceRecord(20.0, 1536, 16, (1, 2, 3)),
    TraceRecord(30.0, 1024, 40, (9, 5)),
    TraceRecord(40.0, 2048, 8, (1, 2, 3, 6)),
    TraceRecord(50.0, 512, 8, (4,)),
    TraceRecord(100.0, 1024, 8, (9, 5)),
]


def test_a_chain_stays_whole_with_its_tenant_behind_the_tenant_s_system_block():
    p = TraceReplay(sample=1, duration_s=10.0, tenants=2, system_tokens=32, max_prompt=80)
    w = trace_workload(RECORDS, p)
    assert [s.arrival_s for s in w.sessions] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0]
    prompts = [s.turns[0].message for s in w.sessions]
    assert [len(m) for m in prompts] == [32 + 32, 32 + 16, 32 + 48, 32 + 32, 80, 32 + 16, 64]
    assert [s.turns[0].max_tokens for s in w.sessions] == [10, 1, 2, 5, 1, 1, 1]
    chain1 = [w.sessions[i] for i in (0, 2, 4)]
    assert len({s.tenant for s in chain1}) == 1
    assert prompts[2][:64] == prompts[0] and prompts[4][: 32 + 48] == prompts[2]
    assert prompts[3] == prompts[6]  # chain 9: the same prompt twice
    for s, m in zip(w.sessions, prompts, strict=True):
        first = next(o for o in w.sessions if o.tenant == s.tenant).turns[0].message
        assert m[:32] == first[:32]  # the tenant's system block
    others = [o for o in w.sessions if o.tenant != chain1[0].tenant]
    assert others and all(o.turns[0].message[:32] != prompts[0][:32] for o in others)


def test_sampling_keeps_or_drops_whole_chains():
    halves = [trace_workload(RECORDS, TraceReplay(sample=2, phase=k)) for k in (0, 1)]
    kept = [{s.turns[0].message[128 : 128 + BLOCK] for s in w.sessions} for w in halves]
    assert sum(len(w.sessions) for w in halves) == len(RECORDS)
    assert not kept[0] & kept[1]  # no chain's first block in both
    assert {chain_key(r) % 2 for r in RECORDS} == {0, 1}


def test_the_reuse_bound_counts_full_block_prefixes_per_tenant():
    x, y = tuple(range(48)), tuple(range(100, 116))

    def one(i: int, tenant: str, ids: tuple[int, ...]) -> Session:
        return Session(f"r{i}", tenant, float(i), (Turn(ids, 1),))

    w = Workload("w", (one(0, "a", x), one(1, "a", x + y), one(2, "b", x + y)), ("a", "b"), 3, 3)
    bound = reuse_bound(w, block=16)
    # r0 names 2 full blocks (the last token's is never shared); r1 finds both and names a third;
    # r2 is another tenant's: nothing, and its 3 blocks are its own (3 + 3 distinct).
    assert (bound.prompt_tokens, bound.reusable_tokens, bound.distinct_blocks) == (176, 32, 6)


def test_host_write_policies_add_fastswitch_variants_and_workloads_can_be_chosen():
    assert variants() == VARIANTS
    chosen = variants(parse_args(["--host-write", "selective,through"]).host_write)
    assert [v.label for v in chosen] == [
        "fastswitch",
        "fastswitch-selective",
        "fastswitch-through",
        "vllm-v1",
        "vllm-baseline",
    ]
    assert chosen[1].mode == "fastswitch"
    assert chosen[1].scheduler_args == (*VARIANTS[0].scheduler_args, "--host-write", "selective")
    assert parse_args(["--workloads", "mooncake"]).workloads == ("mooncake",)
    assert parse_args([]).workloads == ("mooncake", "multiturn")
    for bad in (["--host-write", "back"], ["--workloads", "chat"], ["--workloads", ","]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.system
@pytest.mark.slow
def test_a_quick_run_prints_every_variant_and_counts_hits(tmp_path, capsys):
    out = tmp_path / "prefix.json"
    argv = ["--quick", "--duration", "6", "--sample", "128", "--mt-arrivals", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    labels = [v.label for v in VARIANTS]
    heads = [line.split() for line in text.splitlines() if line.startswith("  metric")]
    assert heads == [["metric", *labels, "vllm-v1/fastswitch", "vllm-baseline/fastswitch"]] * 2
    for row in rows():
        lines = [line for line in text.splitlines() if line.startswith(f"  {row.label}  ")]
        assert len(lines) == 2, row.label
        assert all(len(line[len(row.label) + 2 :].split()) == 5 for line in lines)
    assert "the device cache alone cannot hold it" in text
    doc = json.loads(out.read_text())
    for workload in ("mooncake", "multiturn"):
        med = doc["medians"][workload]
        assert med["fastswitch"]["device hit rate (%)"] > 0, workload
        assert med["vllm-v1"]["device hit rate (%)"] > 0, workload
        assert med["vllm-v1"]["host hit rate (%)"] == 0  # no host tier
        assert med["vllm-baseline"]["device hit rate (%)"] == 0  # no cache at all
        assert med["vllm-baseline"]["host hit rate (%)"] == 0
        finished = {med[lab]["finished"] for lab in labels}
        assert len(finished) == 1 and finished.pop() > 0
    assert {(r["workload"], r["label"]) for r in doc["runs"]} == {
        (w, lab) for w in ("mooncake", "multiturn") for lab in labels
    }
