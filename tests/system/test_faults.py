"""Single faults through the real processes (tiny model, greedy): a worker killed mid-run, the KV
store killed during offloads and restarted, the launcher killed. Each ends with every request
finished as an undisturbed run would finish it, no block or shared-memory file left, and the
deployment serving again (docs/failures.md)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from polling import eventually, eventually_sync
from system_helpers import child_pids_of, fastswitch_shm_files, is_running, wait_until_up

from client import AsyncClient
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline

pytestmark = [pytest.mark.system, pytest.mark.slow]

BOS = 256


def _prompts(n: int, tag: str) -> list[str]:
    return [f"{tag} request {i}: " + "the quick brown fox jumps. " * (2 + i % 4) for i in range(n)]


def _reference(prompts: list[str], max_tokens: int) -> list[list[int]]:
    ids = [[BOS, *p.encode()] for p in prompts]
    return [list(r.token_ids) for r in generate_offline("tiny", ids, max_tokens=max_tokens)]


async def _until(
    check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 30.0
) -> None:
    """``polling.eventually`` for a condition that must be awaited (a stats call)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _idle(c: AsyncClient, *, timeout_s: float = 60.0) -> None:
    """Every request is over and every worker has all its device blocks back (no leak). On a
    timeout the message carries the last stats, to tell a leak from a slow machine."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = await c.stats()
        if (
            s.running == 0
            and s.waiting == 0
            and s.swapped == 0
            and all(w.free_blocks == w.num_blocks for w in s.workers)
        ):
            return
        if time.monotonic() >= deadline:
            workers = [
                f"{w.worker_id}: {w.free_blocks}/{w.num_blocks} free, {w.running} running, "
                f"{w.steps} steps"
                for w in s.workers
            ]
            raise AssertionError(
                f"after {timeout_s:g} s: {s.running} running, {s.waiting} waiting, "
                f"{s.swapped} swapped; {'; '.join(workers)}; {s.finished} finished, {s.failed} "
                f"failed, {s.swap_outs} swap-outs, {s.swap_ins} swap-ins, {s.recomputes} "
                f"recomputes, {s.offloaded_blocks} blocks offloaded"
            )
        await asyncio.sleep(0.02)


def _assert_clean(dep: Deployment) -> None:
    assert dep.alive_pids() == []
    left = fastswitch_shm_files(dep.deployment_id)
    assert not left, f"shared-memory files outlived the deployment: {left}"


def test_a_killed_worker_loses_no_request_and_is_restarted():
    prompts, max_tokens = _prompts(10, "worker-kill"), 40
    want = _reference(prompts, max_tokens)
    dep = Deployment(
        model="tiny", workers=2, port=0, device_kv_blocks=96, policy="fcfs", restart_backoff_s=0.2
    )
    dep.start()
    try:

        async def scenario() -> list[list[int]]:
            async with AsyncClient(dep.address, timeout_s=180) as c:
                calls = [
                    asyncio.ensure_future(c.generate(p, max_tokens=max_tokens, ignore_eos=True))
                    for p in prompts
                ]

                async def both_busy() -> bool:
                    s = await c.stats()
                    return sum(1 for w in s.workers if w.running) == 2

                await _until(both_busy, what="both workers running requests")
                dep.child("worker-0").kill()
                results = await asyncio.wait_for(asyncio.gather(*calls), timeout=150)
                await eventually(
                    lambda: dep.restarts.get("worker-0") == 1, what="worker-0 restarted"
                )

                async def rejoined() -> bool:
                    return len((await c.stats()).workers) == 2

                await _until(rejoined, what="the restarted worker rejoined", timeout_s=90)
                again = await c.generate(prompts[0], max_tokens=max_tokens, ignore_eos=True)
                await _idle(c)
                return [list(r.token_ids) for r in results] + [list(again.token_ids)]

        got = asyncio.run(scenario())
        assert got == [*want, want[0]]
    finally:
        dep.stop()
    _assert_clean(dep)


def test_a_killed_store_hangs_nothing_leaks_nothing_and_reuse_comes_back(tmp_path: Path):
    """Retained turns offload at finish; the store is SIGKILLed while they run. Every request
    ends (bounded) with the undisturbed tokens, no device block stays taken, and once the
    launcher restarted the store, the workers registered again and later turns hit."""
    shared = "a long shared system prompt that every turn of this test starts with. " * 3
    prompts = [f"{shared} turn {i}" for i in range(12)]
    max_tokens = 24
    want = _reference(prompts, max_tokens)
    dep = Deployment(
        model="tiny",
        workers=2,
        port=0,
        device_kv_blocks=96,
        policy="fcfs",
        restart_backoff_s=0.2,
        log_dir=tmp_path / "logs",
    )
    dep.start()
    try:

        async def scenario() -> tuple[list[list[int]], int]:
            async with AsyncClient(dep.address, timeout_s=120) as c:

                async def turns(offset: int) -> list[list[int]]:
                    out = []
                    for i in range(offset, len(prompts), 3):  # each a later turn of the same
                        r = await c.generate(  # prefix: its lookup may wait for an offload
                            prompts[i], max_tokens=max_tokens, ignore_eos=True, retain_ttl_s=300
                        )
                        out.append((i, list(r.token_ids)))
                    return out

                runs = [asyncio.ensure_future(turns(k)) for k in range(3)]

                async def offloaded() -> bool:
                    return (await c.stats()).offloaded_blocks > 0

                await _until(offloaded, what="offloads under way")
                dep.child("kvstore").kill()
                done = await asyncio.wait_for(asyncio.gather(*runs), timeout=100)
                await _idle(c)
                await eventually(lambda: dep.restarts.get("kvstore") == 1, what="store restart")
                by_index = dict(pair for run in done for pair in run)
                tokens = [by_index[i] for i in range(len(prompts))]

                async def hits() -> int:  # the restarted store's cache fills and serves again
                    await c.generate(prompts[0], max_tokens=max_tokens, retain_ttl_s=300)
                    r = await c.generate(prompts[1], max_tokens=max_tokens, ignore_eos=True)
                    assert list(r.token_ids) == want[1]
                    return r.metrics.cached_prompt_tokens

                cached = 0
                deadline = time.monotonic() + 60
                while cached == 0 and time.monotonic() < deadline:
                    cached = await hits()
                await _idle(c)
                return tokens, cached

        tokens, cached = asyncio.run(scenario())
        assert tokens == want
        assert cached > 0, "no reuse after the store restarted"
    finally:
        dep.stop()
    _assert_clean(dep)


def test_a_killed_launcher_takes_its_children_and_their_shared_memory_with_it(tmp_path: Path):
    log_dir = tmp_path / "logs"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastswitch",
            "up",
            "--port",
            "0",
            "--workers",
            "2",
            "--no-http",
            "--device-kv-blocks",
            "64",
            "--log-dir",
            str(log_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(launcher)
        header = (log_dir / "kvstore.log").read_text()
        match = re.search(r"of deployment (\w+)", header)
        assert match is not None, header
        deployment_id = match.group(1)
        children = child_pids_of(launcher.pid)
        assert len(children) == 4  # store, scheduler, two workers
        assert fastswitch_shm_files(deployment_id)  # the arena and the workers' pools
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        eventually_sync(
            lambda: not any(is_running(p) for p in children),
            what="every child exited after the launcher died",
            timeout_s=60,
        )
        assert not fastswitch_shm_files(deployment_id)
        assert "the launcher is gone" in (log_dir / "worker-0.log").read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
