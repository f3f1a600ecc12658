"""Every service of a real deployment exports exactly the metrics docs/metrics.md lists for it,
with the documented types, and a served request shows up in them with its labels."""

from __future__ import annotations

import urllib.request

import pytest
from metrics_doc import documented, exported
from prometheus_client.parser import text_string_to_metric_families

from client import Client, InvalidArgument
from fastswitch.deploy import Deployment

pytestmark = pytest.mark.system


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_every_documented_metric_is_exported_by_its_service(two_workers: Deployment) -> None:
    with Client(two_workers.address, timeout_s=60) as c:
        done = c.generate("metrics, please: " * 3, max_tokens=6, tenant="metrics-tenant")
        with pytest.raises(InvalidArgument):
            c.generate("too long", max_tokens=10**9, tenant="metrics-tenant")
    docs = documented()
    ports = two_workers.metrics_ports
    pages = {name: scrape(port) for name, port in ports.items()}
    for name, text in pages.items():
        service = "worker" if name.startswith("worker-") else name
        assert exported(text) == docs[service], f"{name} exports other metrics than the docs"

    sched = pages["scheduler"]
    tenant = {"tenant": "metrics-tenant"}
    ended = sample(sched, "fastswitch_requests_total", **tenant, finish_reason="length")
    assert ended is not None and ended >= 1
    generated = sample(sched, "fastswitch_generation_tokens_total", **tenant)
    assert generated is not None and generated >= len(done.token_ids)
    ttft = sample(sched, "fastswitch_time_to_first_token_seconds_count", **tenant)
    assert ttft is not None and ttft >= 1
    rejected = sample(sched, "fastswitch_requests_rejected_total", reason="invalid_argument")
    assert rejected is not None and rejected >= 1
    models = {
        s.labels["model"]
        for family in text_string_to_metric_families(sched)
        for s in family.samples
        if "model" in s.labels
    }
    assert len(models) == 1 and "" not in models
    for worker in ("worker-0", "worker-1"):
        capacity = sample(pages[worker], "fastswitch_worker_kv_blocks_capacity", worker=worker)
        assert capacity == 96  # the fixture's --device-kv-blocks
    arena = sample(pages["kvstore"], "fastswitch_kvstore_arena_bytes")
    assert arena is not None and arena > 0
