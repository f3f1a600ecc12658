"""``--mode vllm-v1`` through the real processes (KV store, one worker, scheduler), the tiny model:
a current vLLM's way of serving. Under a preemption storm on a small pool, greedy tokens are the
offline ones; later requests of a tenant share its system prompt from the device cache; nothing
is swapped, offloaded or looked up in the host arena (preemption recomputes)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from system_helpers import fastswitch_shm_files

from client import AsyncClient
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline

pytestmark = pytest.mark.system

BOS = 256
TENANTS = ("a", "b", "c")
SYSTEM = "You are a terse assistant. Answer in one line, and never repeat the question. "
PROMPTS = [
    [BOS, *(SYSTEM + f"{i}: " + "tell me more about recomputing " * (1 + i % 3)).encode()]
    for i in range(12)
]
MAX_TOKENS = 32


def cached_tokens(port: int) -> dict[str, float]:
    """The scheduler's fastswitch_cached_prompt_tokens_total by tier."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {"host": 0.0, "device": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "fastswitch_cached_prompt_tokens_total":
                out[s.labels["tier"]] += s.value
    return out


def test_vllm_v1_recomputes_shares_from_the_device_and_gives_the_offline_tokens():
    dep = Deployment(
        model="tiny",
        workers=1,
        port=0,
        device_kv_blocks=24,
        policy="vtc",
        mode="vllm-v1",
        extra_scheduler_args=("--preempt-margin", "0", "--priority-update-interval", "1"),
    )
    with dep:

        async def run():
            async with AsyncClient(dep.address, timeout_s=300) as c:

                def gen(i: int):
                    tenant = TENANTS[i % len(TENANTS)]
                    return c.generate(
                        prompt_token_ids=PROMPTS[i],
                        max_tokens=MAX_TOKENS,
                        tenant=tenant,
                        ignore_eos=True,
                    )

                first = [await gen(i) for i in range(len(TENANTS))]  # each tenant's cache is warm
                rest = await asyncio.gather(*(gen(i) for i in range(len(TENANTS), len(PROMPTS))))
                return [*first, *rest], await c.stats()

        results, stats = asyncio.run(run())
        tiers = cached_tokens(dep.metrics_ports["scheduler"])
    offline = generate_offline("tiny", PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert [list(r.token_ids) for r in results] == [o.token_ids for o in offline]
    assert stats.mode == "vllm-v1"
    assert stats.preemptions > 0 and stats.recomputes > 0, stats
    assert (stats.swap_outs, stats.swap_ins, stats.swap_out_bytes, stats.swap_in_bytes) == (0,) * 4
    assert (stats.retained_lookups, stats.offloaded_blocks, stats.reuse_hit_tokens) == (0, 0, 0)
    cached = [r.metrics.cached_prompt_tokens for r in results]
    assert cached[: len(TENANTS)] == [0] * len(TENANTS)  # nothing cached yet, and tenants share not
    assert sum(cached) > 0
    assert tiers == {"host": 0.0, "device": sum(cached)}
    assert not fastswitch_shm_files(dep.deployment_id)
    assert dep.alive_pids() == []
