"""fastswitch-bench through the OpenAI-compatible HTTP door of a real deployment, beside its gRPC
door: the same workload completes with the same token counts, greedy replies are the same ids,
the door's errors are failed records with its message, and the report says what it did not
collect."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import SamplingOptions
from client.loadgen.http_transport import NO_STATS
from client.loadgen.ready import wait_for_workers
from client.loadgen.runner import RunConfig, Runner, RunResult
from client.loadgen.stats import Status
from client.loadgen.transport import Transport, open_transport
from client.loadgen.workloads import Session, Turn, Workload, WorkloadSpec, build_workload
from fastswitch.bench import main
from fastswitch.deploy import Deployment

pytestmark = pytest.mark.system

SMALL = ["--workload", "fairness", "--duration", "1", "--rate", "12", "--no-progress"]
SMALL += ["--tenant-prompt-lens", "16", "40", "--tenant-output-lens", "12", "6", "--tenants", "2"]


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    dep = Deployment(
        model="tiny", workers=1, port=0, http_port=0, device_kv_blocks=160, log_level="warning"
    )
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []
    assert not list(Path("/dev/shm").glob(f"fastswitch-{dep.deployment_id}-*"))


def fairness() -> Workload:
    spec = WorkloadSpec(
        "fairness",
        seed=3,
        duration_s=1.0,
        rate=15.0,
        tenants=3,
        tenant_prompt_lens=("16", "48", "80"),
        tenant_output_lens=("20", "10", "5"),
    )
    return build_workload(spec)


def shape(result: RunResult) -> list[tuple[str, str, int, int, str]]:
    return [
        (r.session_id, r.tenant, r.prompt_tokens, r.output_tokens, str(r.status))
        for r in sorted(result.records, key=lambda r: r.session_id)
    ]


async def test_the_same_workload_through_both_doors(deployment):
    w = fairness()
    via_http = await Runner(w, RunConfig(deployment.http_url, warmup_requests=1)).run()
    via_grpc = await Runner(w, RunConfig(deployment.address, warmup_requests=1)).run()
    assert (via_http.kind, via_grpc.kind) == ("http", "grpc")
    assert len(via_http.records) == len(w.sessions) > 5
    assert all(r.status is Status.OK for r in via_http.records + via_grpc.records)
    assert all(r.output_tokens == r.max_tokens for r in via_http.records)
    assert shape(via_http) == shape(via_grpc)
    # the door's usage gives the server's prompt count; its timings are not in OpenAI's answer
    assert all(
        r.usage is not None and r.usage.prompt_tokens == r.prompt_tokens for r in via_http.records
    )
    assert all(r.server is None for r in via_http.records)
    assert all(r.server is not None for r in via_grpc.records)
    assert via_http.before is None and via_http.after is None and via_http.stats_error == NO_STATS
    assert via_grpc.after is not None and via_grpc.stats_error is None


async def test_http_with_a_stats_target_collects_the_scheduler_stats(deployment):
    cfg = RunConfig(deployment.http_url, warmup_requests=0, stats_target=deployment.address)
    result = await Runner(fairness(), cfg).run()
    assert result.before is not None and result.after is not None and result.stats_error is None
    assert result.after.finished - result.before.finished == len(result.records)


async def _reply(t: Transport, prompt: list[int], n: int) -> tuple[int, ...]:
    ids: list[int] = []
    async with t:
        async for p in t.stream(
            prompt,
            options=SamplingOptions(max_tokens=n, ignore_eos=True),
            tenant="same",
            priority=0,
            request_id="lg-greedy",
            timeout_s=30,
        ):
            ids.extend(p.token_ids)
    return tuple(ids)


async def test_greedy_reply_ids_over_http_equal_the_grpc_ones(deployment):
    prompt = [ord(c) for c in "The same prompt through two doors"]
    over_http = await _reply(open_transport(deployment.http_url, timeout_s=30), prompt, 24)
    over_grpc = await _reply(open_transport(deployment.address, timeout_s=30), prompt, 24)
    assert len(over_http) == 24 and over_http == over_grpc


async def test_a_door_error_is_a_failed_record_with_its_message(deployment):
    too_long = Workload(
        name="too-long",
        sessions=(Session("s0", "t", 0.0, (Turn((65, 66, 67), 5000),)),),
        tenants=("t",),
        duration_s=1.0,
        max_requests=1,
    )
    http = await Runner(too_long, RunConfig(deployment.http_url, warmup_requests=0)).run()
    grpc = await Runner(too_long, RunConfig(deployment.address, warmup_requests=0)).run()
    (h,), (g,) = http.records, grpc.records
    assert h.status is Status.FAILED and g.status is Status.FAILED
    assert g.error is not None and g.error.startswith("INVALID_ARGUMENT: ")
    message = g.error.removeprefix("INVALID_ARGUMENT: ")
    assert "max_tokens" in message and "5000" in message
    assert h.error == f"HTTP_400: {message}"  # the door's 400, with the scheduler's words


async def test_wait_workers_through_the_door(deployment):
    assert await wait_for_workers(deployment.http_url, 1, 10, interval_s=0.05) == 1


def test_the_cli_through_http_says_what_it_did_not_collect(deployment, tmp_path, capsys):
    out = tmp_path / "http.json"
    rc = main(["--target", deployment.http_url, *SMALL, "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"against {deployment.http_url} (HTTP door, server's stats not collected)" in text
    assert NO_STATS in text and "VTC ctr" in text
    assert "scheduler:" not in text  # no preemption or swap counts printed as if measured
    doc = json.loads(out.read_text())
    assert doc["run"]["door"] == "http" and doc["summary"]["server"] is None
    assert doc["summary"]["server_ttft"]["count"] == 0  # unknown, not zeros
    assert doc["params"]["resolved"]["max_model_len_from"] == "server"  # from /v1/models
    assert all(r["server"] is None and r["usage"]["prompt_tokens"] > 0 for r in doc["requests"])
    assert doc["summary"]["finished"] == doc["summary"]["issued"] > 0


def test_the_cli_through_http_with_stats_target(deployment, capsys):
    rc = main(["--target", deployment.http_url, "--stats-target", deployment.address, *SMALL])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "(HTTP door, policy vtc, mode fastswitch, 1 worker)" in text
    assert re.search(r"scheduler: \d+ preemptions", text) and "worker-0: cpu" in text
