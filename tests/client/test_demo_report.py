"""The demo's workload helpers and report, without a deployment."""

from __future__ import annotations

import pytest

from client import FinishReason, GenerationResult, RequestMetrics, Stats, TenantStats, WorkerStats
from fastswitch.demo import DemoConfig, DemoReport, TenantOutcome, format_report, percentile, prompt


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert percentile([1.0, 2.0], 0) == 1.0


def test_config_and_prompts():
    cfg = DemoConfig(tenants=3)
    assert [cfg.tenant(i) for i in range(3)] == ["tenant-a", "tenant-b", "tenant-c"]
    assert [len(prompt(cfg.prompt_words(i), salt=i).split()) for i in range(3)] == [8, 24, 40]
    assert prompt(8, salt=1) != prompt(8, salt=2)
    with pytest.raises(ValueError):
        DemoConfig(requests=0)


def _result(ttft: float) -> GenerationResult:
    return GenerationResult(
        request_id="r",
        token_ids=(1, 2, 3),
        text="abc",
        finish_reason=FinishReason.LENGTH,
        metrics=RequestMetrics(ttft_s=ttft, tbt_s=(0.01, 0.02), prompt_tokens=8),
        client_ttft_s=ttft,
        client_tbt_s=(0.01, 0.02),
    )


def test_format_report():
    cfg = DemoConfig(tenants=2, requests=2, max_tokens=3)
    stats = Stats(
        *(0, 0, 0, 2, 0, 0, 1, 1, 1, 0, 1 << 20, 1 << 20, 0, 0),
        policy="vtc",
        mode="fastswitch",
        tenants=(TenantStats("tenant-a", 14.0, 8, 6, 0, 0, 1, 1.0),),
        workers=(WorkerStats("worker-0", "cpu", 64, 60, 0, 10, 0.002, 0, 0, 64),),
    )
    report = DemoReport(
        cfg,
        wall_s=0.5,
        outcomes=(TenantOutcome("tenant-a", _result(0.1)), TenantOutcome("tenant-b", _result(0.2))),
        failures=(),
        stats=stats,
        chat=(_result(0.05),),
        chat_skipped=None,
    )
    text = format_report(report)
    assert "6 output tokens, 12.0 tokens/s, 0 failed" in text
    assert "TTFT (client)" in text and "150.0" in text  # P50 of 100 and 200 ms
    assert "tenant-a" in text and "14.0" in text
    assert "1 preemptions" in text and "worker-0: cpu" in text
    assert "conversation turn 1" in text
