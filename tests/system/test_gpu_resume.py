"""Cross-worker resume through the shared host arena: a request swapped out on one worker is
swapped in on the other and finishes with the offline greedy tokens.

On CUDA both workers share the one GPU: each registers its device pool with the KV store as a
CUDA IPC handle, page-locks its own mapping of the node's arena (``cudaHostRegister``) and runs
its swaps on a side stream. The CPU case runs the same path with shared-memory pools, so the
test's own logic is checked on every machine. Workers run the tiny model in fp32, whose greedy
margins hold on either device (tests/worker/test_invariance.py), so the CPU offline reference
applies to both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
import torch
from system_helpers import fastswitch_shm_files

from client import AsyncClient
from client.results import RequestMetrics
from fastswitch.deploy import Deployment
from fastswitch.offline import generate_offline

pytestmark = pytest.mark.system

BOS = 256
TENANTS = ("a", "b", "c", "d")
PROMPTS = [f"{TENANTS[i % 4]}:{i} " + "resume me elsewhere " * (2 + i % 3) for i in range(12)]
MAX_TOKENS = 40

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@dataclass(frozen=True, slots=True)
class Trace:
    """One request as the client saw it: its tokens and the worker of each streamed chunk."""

    token_ids: tuple[int, ...]
    workers: tuple[str, ...]  # one per chunk that carried tokens, in order
    metrics: RequestMetrics

    @property
    def resumed_elsewhere(self) -> bool:
        """Tokens from two workers, never recomputed: it was swapped out on one and swapped in
        on the other."""
        moved = any(a != b for a, b in zip(self.workers, self.workers[1:], strict=False))
        return moved and self.metrics.recomputes == 0 and self.metrics.swap_ins > 0


async def _traced(c: AsyncClient, i: int, prompt: str) -> Trace:
    tokens: list[int] = []
    workers: list[str] = []
    metrics = RequestMetrics()
    stream = c.generate_stream(
        prompt, max_tokens=MAX_TOKENS, tenant=TENANTS[i % 4], ignore_eos=True
    )
    async with stream:
        async for chunk in stream:
            if chunk.token_ids:
                tokens.extend(chunk.token_ids)
                workers.append(chunk.worker_id or "")
            if chunk.metrics is not None:
                metrics = chunk.metrics
    return Trace(tuple(tokens), tuple(workers), metrics)


def storm(device: str, mode: str) -> tuple[list[Trace], list[str]]:
    """Twelve requests from four tenants on two small pools, preempted at every re-rank."""
    dep = Deployment(
        model="tiny",
        workers=2,
        port=0,
        device_kv_blocks=20,
        policy="vtc",
        mode=mode,
        extra_scheduler_args=(
            *("--preempt-margin", "0"),
            *("--priority-update-interval", "1"),
            *("--min-swap-tokens", "16"),
        ),
        extra_worker_args=("--device", device, "--dtype", "float32"),
    )
    with dep:

        async def run() -> tuple[list[Trace], list[str]]:
            async with AsyncClient(dep.address, timeout_s=300) as c:
                traces = await asyncio.gather(*(_traced(c, i, p) for i, p in enumerate(PROMPTS)))
                stats = await c.stats()
                return list(traces), [w.device for w in stats.workers]

        traces, devices = asyncio.run(run())
    assert not fastswitch_shm_files(dep.deployment_id)
    assert dep.alive_pids() == []
    return traces, devices


@pytest.fixture(scope="module")
def offline_reference() -> list[tuple[int, ...]]:
    out = generate_offline(
        "tiny", [[BOS, *p.encode()] for p in PROMPTS], max_tokens=MAX_TOKENS, ignore_eos=True
    )
    return [tuple(r.token_ids) for r in out]


@pytest.mark.parametrize(
    ("device", "mode"),
    [
        pytest.param("cuda", "fastswitch", marks=[pytest.mark.gpu, needs_cuda]),
        pytest.param("cuda", "vllm-baseline", marks=[pytest.mark.gpu, needs_cuda]),
        pytest.param("cpu", "fastswitch"),
    ],
)
def test_swapped_on_one_worker_resumes_on_the_other_with_the_same_tokens(
    device: str, mode: str, offline_reference: list[tuple[int, ...]]
) -> None:
    traces, devices = storm(device, mode)
    assert [t.token_ids for t in traces] == offline_reference
    assert all(d.startswith(device) for d in devices), devices  # CUDA: pools as CUDA IPC
    assert {w for t in traces for w in t.workers} == {"worker-0", "worker-1"}
    moved = [t for t in traces if t.resumed_elsewhere]
    assert moved, [(t.workers, t.metrics) for t in traces]
    assert sum(t.metrics.swap_outs for t in traces) > 0
