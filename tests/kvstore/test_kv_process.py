"""The store as a real process: health, a few calls, SIGTERM, exit 0, no shared memory left."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from kvstore_svc.arena import ArenaLayout, arena_bytes_for_gib, arena_name, map_arena
from kvstore_svc.servicer import SERVICE_NAME
from proto import kvstore_pb2 as pb
from proto import kvstore_pb2_grpc as pb_grpc
from servekit import shm
from servekit.service import wait_healthy

pytestmark = pytest.mark.system

StartStore = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def deployment() -> Iterator[str]:
    deployment_id = f"test-{uuid.uuid4().hex[:10]}"
    yield deployment_id
    shm.remove_stale(arena_name(deployment_id))


@pytest.fixture
def start_store(tmp_path: Path) -> Iterator[StartStore]:
    """Starts ``python -m kvstore_svc`` with stderr to a file; kills what is still running."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"kvstore-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvstore_svc", *args], stdout=log, stderr=log
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def log_lines(tmp_path: Path) -> list[dict[str, object]]:
    text = (tmp_path / "kvstore-0.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_serve_and_shut_down_cleanly(
    tmp_path: Path, deployment: str, start_store: StartStore
) -> None:
    name = arena_name(deployment)
    stale = shm.create(name, 4096)  # left by a "crashed" run
    stale.close()
    sock = tmp_path / "kv.sock"
    proc = start_store(
        "--listen", f"unix://{sock}", "--metrics-port", "0",
        "--deployment-id", deployment, "--host-kv-gib", "0.05",
    )  # fmt: skip
    target = f"unix://{sock}"
    try:
        await wait_healthy(target, timeout_s=60, service=SERVICE_NAME)
    except TimeoutError:
        pytest.fail(
            f"store not healthy (exit {proc.poll()}):\n{(tmp_path / 'kvstore-0.log').read_text()}"
        )
    assert (shm.SHM_DIR / name).stat().st_size == arena_bytes_for_gib(0.05)  # stale one replaced

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.KVStoreStub(channel)
        reg = await stub.RegisterWorker(
            pb.RegisterWorkerRequest(
                worker_id="w0", model_fingerprint="m", block_bytes=64 * 1024,
                device="cpu", pool_kind="shm", pool_blocks=8,
            ),
            timeout=10,
        )  # fmt: skip
        assert reg.arena_name == name
        assert reg.num_host_blocks == arena_bytes_for_gib(0.05) // (64 * 1024)
        res = await stub.Reserve(pb.ReserveRequest(num_blocks=2), timeout=10)
        [extent] = res.extents
        host = map_arena(reg.arena_name, ArenaLayout(reg.block_bytes, reg.num_host_blocks))
        host[extent.start : extent.start + 2].fill_(7)  # the worker's copy, straight into shm
        blocks = [extent.start, extent.start + 1]
        await stub.Commit(
            pb.CommitRequest(lease_id=res.lease_id, blocks=blocks, block_hashes=[b"h0", b"h1"]),
            timeout=10,
        )
        found = await stub.Lookup(pb.LookupRequest(block_hashes=[b"h0", b"h1", b"h2"]), timeout=10)
        assert list(found.blocks) == blocks
        assert torch.all(host[blocks] == 7)
        del host

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    assert not (shm.SHM_DIR / name).exists()
    msgs = [line["msg"] for line in log_lines(tmp_path)]
    assert "removed stale arena left by an earlier run" in msgs
    assert msgs[-1] == "arena removed"


def test_bad_config_exits_2_and_creates_nothing(
    tmp_path: Path, deployment: str, start_store: StartStore
) -> None:
    proc = start_store("--deployment-id", deployment, "--host-kv-gib", "0", "--metrics-port", "0")
    assert proc.wait(timeout=60) == 2
    [line] = [x for x in log_lines(tmp_path) if x["level"] == "error"]
    assert "--host-kv-gib" in str(line["error"])
    assert not (shm.SHM_DIR / arena_name(deployment)).exists()
