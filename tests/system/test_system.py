"""The whole system as users run it: separate processes over gRPC, through the SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from system_helpers import child_pids_of, fastswitch_shm_files

from client import AsyncClient, Client, InvalidArgument, NotFound, ResourceExhausted
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline

pytestmark = pytest.mark.system

TENANTS = ("alice", "bob", "carol", "dave")
PROMPTS = [
    f"{TENANTS[i % 4]} asks question {i}: " + "why is the sky blue? " * (1 + i % 5)
    for i in range(16)
]
MAX_TOKENS = 24


def test_sixteen_streams_from_four_tenants_match_offline_greedy(two_workers):
    async def run_all():
        async with AsyncClient(two_workers.address, timeout_s=120) as c:
            return await asyncio.gather(
                *(
                    c.generate(p, max_tokens=MAX_TOKENS, tenant=TENANTS[i % 4])
                    for i, p in enumerate(PROMPTS)
                )
            )

    results = asyncio.run(run_all())
    bos = 256  # the tiny byte tokenizer's <bos>: text prompts start with it
    offline = generate_offline("tiny", [[bos, *p.encode()] for p in PROMPTS], max_tokens=MAX_TOKENS)
    for got, want in zip(results, offline, strict=True):
        assert list(got.token_ids) == list(want.token_ids)
        assert str(got.finish_reason) == str(want.finish_reason)
        assert got.metrics.ttft_s > 0
    assert {r.worker_id for r in results} == {"worker-0", "worker-1"}


def test_matches_the_fastswitch_run_command(two_workers):
    prompt = "the offline command and the service agree"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastswitch",
            "run",
            "--model",
            "tiny",
            "--prompt",
            prompt,
            "--max-tokens",
            "20",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    offline = json.loads(out.stdout)
    with Client(two_workers.address, timeout_s=60) as c:
        online = c.generate(prompt, max_tokens=20)
    assert list(online.token_ids) == offline["token_ids"]
    assert online.text == offline["text"]


def test_cancellation_and_disconnect_free_blocks(two_workers):
    async def scenario():
        async with AsyncClient(two_workers.address, timeout_s=60) as c:
            # A client that leaves mid-stream.
            stream = c.generate_stream("leave early", max_tokens=400, ignore_eos=True)
            async for _chunk in stream:
                break
            await stream.aclose()
            # A request cancelled by id from another call.
            task = asyncio.create_task(
                c.generate("cancel me", max_tokens=400, ignore_eos=True, request_id="victim")
            )
            for _ in range(500):
                stats = await c.stats()
                if stats.running:
                    break
                await asyncio.sleep(0.01)
            assert await c.cancel("victim")
            result = await task
            assert result.finish_reason == "cancelled"
            for _ in range(500):
                stats = await c.stats()
                if stats.running == 0 and all(w.free_blocks == w.num_blocks for w in stats.workers):
                    return stats
                await asyncio.sleep(0.01)
            raise AssertionError(f"blocks not freed: {stats}")

    stats = asyncio.run(scenario())
    assert stats.cancelled >= 2


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"prompt": ""}, InvalidArgument, "empty"),
        ({"prompt": "x", "max_tokens": 0}, ValueError, "max_tokens"),  # caught by the SDK
        ({"prompt": "x" * 3000}, InvalidArgument, "context"),
        ({"prompt_token_ids": [1, 10**6]}, InvalidArgument, "vocabulary"),
        ({"prompt": "x", "temperature": -0.5}, InvalidArgument, "temperature"),
        ({"prompt": "x", "tenant": "no spaces allowed"}, InvalidArgument, "tenant"),
        ({"prompt": "x" * 1000, "max_tokens": 800}, ResourceExhausted, "capacity"),
    ],
)
def test_bad_input_is_refused_and_service_continues(two_workers, kwargs, error, fragment):
    with Client(two_workers.address, timeout_s=60) as c:
        kwargs = {"max_tokens": 4, **kwargs}
        with pytest.raises(error) as err:
            c.generate(**kwargs)
        assert fragment in str(err.value)
        assert len(c.generate("still serving", max_tokens=4).token_ids) == 4
        with pytest.raises(NotFound):
            c.cancel("no-such-request")


def test_shutdown_leaves_no_process_and_no_shared_memory(my_pid):
    dep = Deployment(model="tiny", workers=1, port=0)
    dep.start()
    pids = dep.alive_pids()
    assert len(pids) == 3
    files = fastswitch_shm_files(dep.deployment_id)
    assert len(files) == 2, f"expected the arena and one pool file while up: {files}"
    with Client(dep.address, timeout_s=60) as c:
        assert c.generate("hello", max_tokens=3).finish_reason == "length"
    dep.stop()
    assert dep.alive_pids() == []
    assert not set(pids) & set(child_pids_of(my_pid))
    assert fastswitch_shm_files(dep.deployment_id) == set()
    assert not dep.run_dir.exists()
