"""Context switching and retained KV through the real processes (KV store, workers, scheduler):
preemption storms in both modes give the offline greedy tokens, and a conversation's turns reuse
the previous turns' KV, moving only new blocks."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from system_helpers import fastswitch_shm_files

from client import AsyncClient, Client
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc

pytestmark = pytest.mark.system

BOS = 256
TENANTS = ("a", "b", "c", "d")
PROMPTS = [
    f"{TENANTS[i % 4]}:{i} " + "tell me more about swapping " * (2 + i % 3) for i in range(12)
]
MAX_TOKENS = 40


def storm(mode: str, *scheduler_args: str) -> tuple[list[list[int]], object]:
    dep = Deployment(
        model="tiny",
        workers=2,
        port=0,
        device_kv_blocks=20,
        policy="vtc",
        mode=mode,
        extra_scheduler_args=(
            "--preempt-margin",
            "0",
            "--priority-update-interval",
            "1",
            "--min-swap-tokens",
            "16",
            *scheduler_args,
        ),
    )
    with dep:

        async def run():
            async with AsyncClient(dep.address, timeout_s=300) as c:
                results = await asyncio.gather(
                    *(
                        c.generate(p, max_tokens=MAX_TOKENS, tenant=TENANTS[i % 4], ignore_eos=True)
                        for i, p in enumerate(PROMPTS)
                    )
                )
                return results, await c.stats()

        results, stats = asyncio.run(run())
        asyncio.run(wait_until_no_leases(dep.kvstore_address))
    assert not fastswitch_shm_files(dep.deployment_id)
    assert dep.alive_pids() == []
    return [list(r.token_ids) for r in results], stats


async def wait_until_no_leases(kvstore_address: str) -> None:
    """The KV store ends up with no lease, reservation or pin (within a few seconds)."""
    async with grpc.aio.insecure_channel(kvstore_address) as ch:
        stub = kv_grpc.KVStoreStub(ch)
        for _ in range(500):
            s = await stub.GetStats(kv.StoreStatsRequest(), timeout=5)
            if s.active_leases == 0 and s.reserved_blocks == 0 and s.pinned_blocks == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"leases left in the store: {s}")


@pytest.fixture(scope="module")
def offline_reference() -> list[list[int]]:
    out = generate_offline(
        "tiny", [[BOS, *p.encode()] for p in PROMPTS], max_tokens=MAX_TOKENS, ignore_eos=True
    )
    return [list(r.token_ids) for r in out]


@pytest.mark.parametrize(
    ("mode", "scheduling"),
    [
        ("fastswitch", "--async-scheduling"),
        ("fastswitch", "--no-async-scheduling"),
        ("vllm-baseline", "--no-async-scheduling"),
    ],
)
def test_preemption_storm_gives_the_offline_tokens(mode, scheduling, offline_reference):
    tokens, stats = storm(mode, scheduling)
    assert tokens == offline_reference
    assert stats.preemptions > 0 and stats.swap_outs > 0 and stats.swap_ins > 0, stats
    assert stats.swap_out_bytes > 0 and stats.swap_in_bytes > 0
    if mode == "vllm-baseline":
        assert stats.swap_bytes_avoided == 0  # the baseline swaps the whole context every time


def converse(monkeypatch, turns: list[str], *, scheduler_args=(), quota_blocks: int = 0):
    """One 6-turn conversation on a fresh deployment; (replies, cached tokens, stats per turn)."""
    monkeypatch.setenv("FASTSWITCH_TENANT_QUOTA_BLOCKS", str(quota_blocks))  # the KV store's
    dep = Deployment(model="tiny", workers=1, port=0, extra_scheduler_args=scheduler_args)
    replies, cached, stats = [], [], []
    with dep, Client(dep.address, timeout_s=120) as c:
        chat = c.chat(tenant="alice", system="You are terse.")
        for message in turns:
            r = chat.send(message, max_tokens=24, ignore_eos=True)
            replies.append(list(r.token_ids))
            cached.append(r.metrics.cached_prompt_tokens)
            stats.append(_settled_stats(c))
        assert chat.end() > 0 or scheduler_args
    assert not fastswitch_shm_files(dep.deployment_id)
    return replies, cached, stats


def _settled_stats(c):
    """Stats once the last turn's offload has been committed (it finishes after the reply)."""
    deadline = time.monotonic() + 10
    while True:
        s = c.stats()
        if s.running == 0 and all(w.free_blocks == w.num_blocks for w in s.workers):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"offload did not settle: {s}")
        time.sleep(0.02)


TURNS = [f"turn {k}: " + "what about block groups? " * (1 + k % 2) for k in range(6)]
BLOCK_BYTES = 64 * 1024  # tiny: 4 layers x (K, V) x 16 tokens x 4 kv heads x 32 dims x fp32


def test_six_turns_are_identical_with_reuse_without_and_under_eviction(monkeypatch):
    with_reuse, cached, stats = converse(monkeypatch, TURNS)
    without, cached_off, _ = converse(monkeypatch, TURNS, scheduler_args=("--no-retain",))
    evicted, cached_evicted, _ = converse(monkeypatch, TURNS, quota_blocks=1)
    assert with_reuse == without == evicted
    assert cached_off == [0] * 6
    assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached
    assert sum(cached_evicted) < sum(cached), (cached_evicted, cached)
    for k in range(1, 6):
        # Turn k swaps in exactly its retained prefix ...
        moved_in = stats[k].swap_in_bytes - stats[k - 1].swap_in_bytes
        assert moved_in == cached[k] // 16 * BLOCK_BYTES, (k, moved_in, cached[k])
        # ... and offloads only the full blocks the host lacked: the blocks past that prefix.
        offloaded = stats[k].offloaded_blocks - stats[k - 1].offloaded_blocks
        moved_out = stats[k].swap_out_bytes - stats[k - 1].swap_out_bytes
        assert moved_out == offloaded * BLOCK_BYTES
        prompt_and_reply = len(with_reuse[k]) + cached[k] + 64  # generous bound on new tokens
        assert 0 < offloaded <= prompt_and_reply // 16 - cached[k] // 16 + 1, (k, offloaded)


def test_a_killed_worker_loses_no_request_and_leaks_no_lease(offline_reference):
    """Rule 7: KV is a cache. SIGKILL a worker mid-storm: its requests are recomputed on the
    other worker with the same tokens, and its store leases expire (nothing leaks)."""
    dep = Deployment(
        model="tiny",
        workers=2,
        port=0,
        device_kv_blocks=20,
        policy="vtc",
        extra_scheduler_args=(
            "--preempt-margin",
            "0",
            "--priority-update-interval",
            "1",
            "--min-swap-tokens",
            "16",
            "--host-lease-s",
            "1",
        ),
        restart=False,  # the other worker does all the work (test_faults.py: with restarts)
    )
    with dep:

        async def run():
            async with AsyncClient(dep.address, timeout_s=300) as c:
                tasks = [
                    asyncio.create_task(
                        c.generate(p, max_tokens=MAX_TOKENS, tenant=TENANTS[i % 4], ignore_eos=True)
                    )
                    for i, p in enumerate(PROMPTS)
                ]
                while (await c.stats()).swap_outs == 0:
                    await asyncio.sleep(0.005)
                dep.child("worker-1").kill()  # a crash, through the handle this test owns
                return await asyncio.gather(*tasks), await c.stats()

        results, stats = asyncio.run(run())
        assert [list(r.token_ids) for r in results] == offline_reference
        assert [w.worker_id for w in stats.workers] == ["worker-0"]
        assert sum(r.metrics.recomputes for r in results) > 0

        asyncio.run(wait_until_no_leases(dep.kvstore_address))
    assert not fastswitch_shm_files(dep.deployment_id)  # the killed worker's pool file too
    assert dep.alive_pids() == []
