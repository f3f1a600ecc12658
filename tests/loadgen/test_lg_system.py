"""fastswitch-bench against real processes: a run against a deployment (table, JSON, PNGs) and a
compare of both modes, each starting and stopping its own deployments."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from fastswitch.bench import main
from fastswitch.deploy import Deployment

pytestmark = pytest.mark.system

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--workload", "fairness", "--duration", "1.5", "--rate", "16", "--no-progress"]
SMALL += ["--tenant-prompt-lens", "32", "64", "96", "--tenant-output-lens", "24", "16", "8"]


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    dep = Deployment(model="tiny", workers=1, port=0, device_kv_blocks=48, log_level="warning")
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []


def test_run_against_a_deployment_writes_table_json_and_pngs(deployment, tmp_path, capsys):
    out = tmp_path / "run.json"
    plots = tmp_path / "plots"
    rc = main(
        [
            "--target",
            deployment.address,
            *SMALL,
            "--ttft-slo",
            "5",
            "--tbt-slo",
            "1",
            "--json",
            str(out),
            "--plot",
            str(plots),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "(policy vtc, mode fastswitch, 1 worker)" in text
    assert "P99.9" in text and "Jain's fairness index" in text and "worker-0: cpu" in text
    doc = json.loads(out.read_text())
    summary = doc["summary"]
    assert summary["failed"] == 0 and summary["finished"] == summary["issued"] > 0
    assert summary["server"]["mode"] == "fastswitch"
    assert summary["server"]["finished"] == summary["finished"]  # deltas exclude the warm-up
    assert summary["tbt"]["count"] > 0 and summary["output_tokens"] == sum(
        r["output_tokens"] for r in doc["requests"]
    )
    for name in ("ttft_cdf.png", "tbt_cdf.png", "service_fastswitch.png"):
        assert (plots / name).read_bytes()[:8] == PNG


def test_multiturn_history_is_accepted_by_the_server(deployment, capsys):
    rc = main(
        [
            "--target",
            deployment.address,
            "--workload",
            "multiturn",
            "--duration",
            "1",
            "--rate",
            "4",
            "--turns",
            "3",
            "--prompt-len",
            "12",
            "--output-len",
            "6",
            "--think-time",
            "0",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and " 0 failed" in text


def test_both_kinds_of_grpc_calls_serve_the_same_requests(deployment, tmp_path):
    counts = {}
    for calls in ("shared", "per-request"):
        out = tmp_path / f"{calls}.json"
        rc = main(
            ["--target", deployment.address, "--workload", "fairness", "--duration", "1",
             "--rate", "8", "--seed", "3", "--grpc-calls", calls, "--json", str(out),
             "--no-progress"]
        )  # fmt: skip
        assert rc == 0
        records = json.loads(out.read_text())["requests"]
        assert records and all(r["status"] == "ok" for r in records)
        counts[calls] = sorted((r["tenant"], r["output_tokens"]) for r in records)
    assert counts["shared"] == counts["per-request"]


def test_compare_both_modes(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    rc = main(
        [
            "compare",
            "--modes",
            "fastswitch,vllm-baseline",
            "--device-kv-blocks",
            "48",
            "--scheduler-arg=--max-num-seqs 16",
            *SMALL,
            "--duration",
            "1",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "p"),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    header = next(line for line in text.splitlines() if line.strip().startswith("metric"))
    assert header.split() == ["metric", "fastswitch", "vllm-baseline", "ratio"]
    assert "TTFT P99.9 (ms)" in text and "ratio > 1: fastswitch better" in text
    doc = json.loads(out.read_text())
    assert doc["modes"] == ["fastswitch", "vllm-baseline"]
    assert [r["summary"]["server"]["mode"] for r in doc["runs"]] == doc["modes"]
    assert doc["params"]["deployment"]["scheduler_args"] == ["--max-num-seqs", "16"]
    assert doc["medians"]["vllm-baseline"]["finished"] > 0
    assert set(doc["ratios"]["vllm-baseline"]) >= {"ttft_p99", "output_tokens_per_s"}
    assert (tmp_path / "p" / "service_vllm-baseline.png").read_bytes()[:8] == PNG
