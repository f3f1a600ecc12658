"""The device prefix cache through the real processes (KV store, one worker, scheduler) with the
tiny model: requests sharing a system prompt reuse its blocks from the worker's pool, report
them as cached tokens of the device tier, and generate exactly what the tiny model does without
any cache (``generate_offline``)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import AsyncClient
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline

pytestmark = pytest.mark.system

BOS = 256
SYSTEM = "You are a terse assistant. Answer in one line, and never repeat the question. "


@pytest.fixture(scope="module")
def cached() -> Iterator[Deployment]:
    dep = Deployment(
        model="tiny",
        workers=1,
        port=0,
        device_kv_blocks=96,
        policy="fcfs",
        extra_scheduler_args=("--device-prefix-cache",),
    )
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []


def device_tokens(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "fastswitch_cached_prompt_tokens_total" and s.labels.get("tier") == "device"
    )


def test_a_shared_system_prompt_is_served_from_the_device(cached: Deployment) -> None:
    questions = [f"question {i}: what is {i} + {i}?" for i in range(6)]
    prompts = [[BOS, *(SYSTEM + q).encode()] for q in questions]

    async def scenario():
        async with AsyncClient(cached.address, timeout_s=120) as c:
            first = await c.generate(prompt_token_ids=prompts[0], max_tokens=12, ignore_eos=True)
            rest = await asyncio.gather(
                *(
                    c.generate(prompt_token_ids=p, max_tokens=12, ignore_eos=True)
                    for p in prompts[1:]
                )
            )
            return [first, *rest]

    results = asyncio.run(scenario())
    offline = generate_offline("tiny", prompts, max_tokens=12, ignore_eos=True)
    assert [list(r.token_ids) for r in results] == [o.token_ids for o in offline]
    assert results[0].metrics.cached_prompt_tokens == 0
    # BOS, the system prompt and "question ": the most a later request can find cached.
    shared = next(i for i, col in enumerate(zip(*prompts, strict=False)) if len(set(col)) > 1)
    for r in results[1:]:
        assert 0 < r.metrics.cached_prompt_tokens <= shared
    total = sum(r.metrics.cached_prompt_tokens for r in results)
    assert device_tokens(cached.metrics_ports["scheduler"]) == total


def locality_events(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "fastswitch_scheduler_locality_total"
    }


def test_two_workers_with_placement_serve_shared_documents_exactly() -> None:
    """Cache-aware placement through the real frontend (two worker sessions, their wake-ups):
    a burst over documents cached on either worker drains, with the tiny model's own tokens."""
    dep = Deployment(
        model="tiny",
        workers=2,
        port=0,
        device_kv_blocks=96,
        policy="vtc",
        max_batched_tokens=64,  # a document's prefill is several steps: worth a wait
        extra_scheduler_args=("--device-prefix-cache",),
    )
    dep.start()
    try:
        docs = [
            f"Document {d}: " + f"fact {d} is that {d} squared is {d * d}. " * 8 for d in range(4)
        ]
        prompts = [[BOS, *(doc + f"Q{k}?").encode()] for k in range(3) for doc in docs]

        async def scenario():
            async with AsyncClient(dep.address, timeout_s=120) as c:
                warm = [
                    await c.generate(prompt_token_ids=p, max_tokens=8, ignore_eos=True)
                    for p in prompts[:4]
                ]
                burst = await asyncio.gather(
                    *(
                        c.generate(prompt_token_ids=p, max_tokens=8, ignore_eos=True)
                        for p in prompts[4:]
                    )
                )
                return [*warm, *burst]

        results = asyncio.run(asyncio.wait_for(scenario(), 180))
        offline = generate_offline("tiny", prompts, max_tokens=8, ignore_eos=True)
        assert [list(r.token_ids) for r in results] == [o.token_ids for o in offline]
        events = locality_events(dep.metrics_ports["scheduler"])
        assert set(events) == {"placement", "deferral", "fallback"}
        # The burst hits the worker holding each document, unless locality gave way (an idle
        # worker took a request rather than idle, counted as a fallback) or load sent it to the
        # idle worker: a loaded machine stretches a holder's steps until that happens, so a
        # miss or two is allowed, not more (with a hit, a prefill is one step instead of five).
        misses = sum(r.metrics.cached_prompt_tokens == 0 for r in results[4:])
        assert misses <= 2
        assert events["placement"] > 0
    finally:
        dep.stop()
    assert dep.alive_pids() == []
