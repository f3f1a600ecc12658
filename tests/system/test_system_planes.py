"""The two planes with real processes: a KV store and a scheduler whose internal plane is on TCP
(as in compose) with a deployment secret, and a real tenant request queued on the public port.

A rogue worker on the public port gets UNIMPLEMENTED for StepLink.Connect; on the internal port
without the secret, or with a wrong one, UNAUTHENTICATED; neither receives a message, and the
request stays queued. A real worker with the wrong secret is refused (exit 3), one with the
secret joins and serves it. The store's TCP listener likewise refuses calls without the secret.
A standalone scheduler or store refuses a TCP internal listener without a secret.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from system_helpers import fastswitch_shm_files

from client import AsyncClient, SamplingOptions
from fastswitch.deploy.ports import free_ports
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from servekit.modelspec import load_model_spec
from servekit.planes import SECRET_ENV, SECRET_METADATA
from servekit.service import wait_healthy

pytestmark = pytest.mark.system

SECRET = "planes-test-" + uuid.uuid4().hex
START_S = 120.0


@dataclass
class Node:
    """A KV store and a scheduler, both internal listeners on TCP with SECRET."""

    public: str
    internal: str
    kvstore: str
    deployment_id: str
    run_dir: Path
    procs: list[subprocess.Popen[bytes]]
    log_paths: dict[int, Path]

    def env(self, secret: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSWITCH_")}
        if secret is not None:
            env[SECRET_ENV] = secret
        return env

    def spawn(self, service: str, *flags: str, secret: str | None = SECRET) -> subprocess.Popen:
        path = self.run_dir / f"{service}-{len(self.procs)}.log"
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fastswitch", "serve", service, *flags],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env(secret),
            )
        self.procs.append(proc)
        self.log_paths[proc.pid] = path
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.log_paths[proc.pid].read_text()

    def worker(self, name: str, *flags: str, secret: str | None = SECRET) -> subprocess.Popen:
        return self.spawn(
            "worker",
            *("--listen", f"unix://{self.run_dir}/{name}.sock", "--worker-id", name),
            *("--scheduler", self.internal, "--model", "tiny", "--device", "cpu"),
            *("--device-kv-blocks", "64", "--metrics-port", "0", "--threads", "1"),
            *("--deployment-id", self.deployment_id, "--log-level", "warning"),
            *flags,
            secret=secret,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.run_dir.glob("*.log")
        )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):  # workers, scheduler, then the store
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    public, internal, store = free_ports(3)
    run_dir = Path(tempfile.mkdtemp(prefix="fs-planes-"))
    dep = Node(
        public=f"127.0.0.1:{public}",
        internal=f"127.0.0.1:{internal}",
        kvstore=f"127.0.0.1:{store}",
        deployment_id="planes" + uuid.uuid4().hex[:8],
        run_dir=run_dir,
        procs=[],
        log_paths={},
    )
    common = ("--deployment-id", dep.deployment_id, "--metrics-port", "0", "--log-level", "info")
    try:
        dep.spawn("kvstore", "--listen", dep.kvstore, "--host-kv-gib", "0.05", *common)
        asyncio.run(wait_healthy(dep.kvstore, timeout_s=START_S))  # health is open
        dep.spawn(
            "scheduler",
            *("--listen", dep.public, "--internal-listen", dep.internal),
            *("--kvstore", dep.kvstore, "--model", "tiny", "--policy", "fcfs"),
            *common,
        )
        asyncio.run(wait_healthy(dep.public, timeout_s=START_S))
        yield dep
    except BaseException:
        print(dep.logs())
        raise
    finally:
        _stop(dep.procs)
        leftovers = fastswitch_shm_files(dep.deployment_id)
        shutil.rmtree(run_dir, ignore_errors=True)
        assert not leftovers, leftovers
        assert all(p.returncode is not None for p in dep.procs)


def _hello(worker_id: str) -> wk.WorkerMessage:
    spec = load_model_spec("tiny")
    return wk.WorkerMessage(
        hello=wk.WorkerHello(
            worker_id=worker_id,
            model_fingerprint=spec.fingerprint,
            num_blocks=64,
            block_size=16,
            block_bytes=1 << 16,
            max_model_len=spec.max_model_len,
            device="cpu",
            address="unix:///rogue.sock",
            vocab_size=spec.vocab_size,
        )
    )


async def _rogue(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    """Dials StepLink.Connect as a worker would; the status it ends with. Fails if the scheduler
    sends it anything at all (an Accepted, a plan).

    grpc-python reports INTERNAL locally when the hello's write races the server ending the
    call (the server's own status is then lost): such an attempt is made again."""
    code = grpc.StatusCode.INTERNAL
    for _ in range(5):
        async with grpc.aio.insecure_channel(target) as channel:
            call = wk_grpc.StepLinkStub(channel).Connect(metadata=metadata, timeout=10)
            try:
                await call.write(_hello("rogue"))
                msg = await call.read()
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code != grpc.StatusCode.INTERNAL:
                    return code
                continue
            raise AssertionError(f"the rogue worker on {target} received {msg}")
    return code


async def _queue_behind_a_stalled_worker(
    api: AsyncClient, internal: str, tenant: str
) -> asyncio.Task:
    """A real request of `tenant`, queued with no worker joined: a worker of our own (with the
    secret) joins, is planned the request, and leaves without answering; the scheduler requeues
    it. Returns the request's collecting task."""
    async with grpc.aio.insecure_channel(internal) as channel:
        call = wk_grpc.StepLinkStub(channel).Connect(metadata=((SECRET_METADATA, SECRET),))
        await call.write(_hello("stalled"))
        assert (await asyncio.wait_for(call.read(), 30)).HasField("accepted")
        opts = SamplingOptions(max_tokens=6, temperature=0.0)
        task = asyncio.ensure_future(
            api.generate("the planes", options=opts, tenant=tenant, timeout_s=4 * START_S)
        )
        assert (await asyncio.wait_for(call.read(), 30)).HasField("plan")
        call.cancel()
    stats = await api.stats()
    for _ in range(500):  # bounded: 10 s
        stats = await api.stats()
        if stats.workers == () and stats.waiting == 1:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"the request was not requeued: {stats}")


def test_rogue_workers_get_nothing_and_a_real_one_serves(node: Node) -> None:
    async def main() -> None:
        async with AsyncClient(node.public, timeout_s=60) as api:
            task = await _queue_behind_a_stalled_worker(api, node.internal, "tenant-a")
            # The public port has no worker plane at all, secret or not.
            assert await _rogue(node.public) == grpc.StatusCode.UNIMPLEMENTED
            good = ((SECRET_METADATA, SECRET),)
            assert await _rogue(node.public, good) == grpc.StatusCode.UNIMPLEMENTED
            # The internal port: nothing without the secret.
            assert await _rogue(node.internal) == grpc.StatusCode.UNAUTHENTICATED
            wrong = ((SECRET_METADATA, SECRET[:-1] + "!"),)
            assert await _rogue(node.internal, wrong) == grpc.StatusCode.UNAUTHENTICATED
            stats = await api.stats()
            assert stats.workers == () and stats.waiting == 1 and not task.done()
            # A real worker with a wrong secret is refused for good.
            bad = node.worker("worker-bad", secret="not-the-secret-" + uuid.uuid4().hex)
            code = await asyncio.to_thread(bad.wait, START_S)
            assert code == 3, node.logs()
            assert (
                "UNAUTHENTICATED"
                in (node.run_dir / f"worker-{len(node.procs) - 1}.log").read_text()
            )
            assert (await api.stats()).workers == () and not task.done()
            # With the secret a worker registers with the store, joins and serves the request.
            good_worker = node.worker("worker-good", "--kvstore", node.kvstore)
            result = await asyncio.wait_for(task, START_S)
            assert len(result.token_ids) == 6 and result.worker_id == "worker-good"
            assert [w.worker_id for w in (await api.stats()).workers] == ["worker-good"]
            good_worker.terminate()
            assert await asyncio.to_thread(good_worker.wait, 30) == 0

    asyncio.run(main())


def test_the_store_refuses_calls_without_the_secret(node: Node) -> None:
    async def main() -> None:
        register = kv.RegisterWorkerRequest(
            worker_id="rogue", model_fingerprint="x", block_bytes=1 << 16, device="cpu"
        )
        for metadata in ((), ((SECRET_METADATA, "x" * len(SECRET)),)):
            async with grpc.aio.insecure_channel(node.kvstore) as channel:
                stub = kv_grpc.KVStoreStub(channel)
                for call in (
                    stub.GetStats(kv.StoreStatsRequest(), metadata=metadata, timeout=10),
                    stub.RegisterWorker(register, metadata=metadata, timeout=10),
                    stub.Reserve(kv.ReserveRequest(num_blocks=1), metadata=metadata, timeout=10),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc.aio.insecure_channel(node.kvstore) as channel:
            stats = await kv_grpc.KVStoreStub(channel).GetStats(
                kv.StoreStatsRequest(), metadata=((SECRET_METADATA, SECRET),), timeout=10
            )
        assert (stats.workers, stats.reserved_blocks, stats.active_leases) == (0, 0, 0)

    asyncio.run(main())


@pytest.mark.parametrize("service", ["scheduler", "kvstore"])
def test_a_tcp_internal_listener_without_a_secret_is_refused(node: Node, service: str) -> None:
    (port,) = free_ports(1)
    flag = "--internal-listen" if service == "scheduler" else "--listen"
    proc = node.spawn(service, flag, f"127.0.0.1:{port}", "--metrics-port", "0", secret=None)
    assert proc.wait(timeout=START_S) == 2
    log = node.log(proc)
    assert f"{flag} 127.0.0.1:{port} is TCP" in log and "deployment secret" in log
