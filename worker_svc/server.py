"""worker_svc process: load the model, allocate the KV pool, register with the KV store and map
its host arena (swaps), join the scheduler and execute its step plans until SIGTERM; then shut
down in order."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import torch
from prometheus_client import Counter, Gauge, Histogram

from kvstore_svc.arena import ArenaLayout
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from servekit import shm
from servekit.config import add_common_flags, env_default
from servekit.logs import setup_logging
from servekit.names import MODES, SWAP_LAYOUTS, mode_settings
from servekit.service import GrpcService, run
from worker_svc.engine import Engine
from worker_svc.executor import StepExecutor
from worker_svc.kv_pool import KVPool
from worker_svc.link import LinkRejected, SchedulerLink
from worker_svc.loader import load_model
from worker_svc.servicer import WorkerServicer
from worker_svc.swap_engine import SwapEngine, SwapLayout
from worker_svc.telemetry import Telemetry

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    listen: str
    metrics_port: int
    metrics_host: str
    log_level: str
    deployment_id: str
    scheduler: str
    kvstore: str
    model: str
    device: str
    dtype: str
    device_kv_blocks: int | None
    device_kv_fraction: float
    block_size: int
    worker_id: str
    advertise: str
    threads: int
    swap_layout: str = SwapLayout.GROUP
    swap_sync: bool = False

    def __post_init__(self) -> None:
        if not self.scheduler:
            raise ValueError("--scheduler is required (the scheduler's address)")
        if self.device_kv_blocks is not None and self.device_kv_blocks <= 0:
            raise ValueError(f"--device-kv-blocks must be > 0, got {self.device_kv_blocks}")
        if not 0 < self.device_kv_fraction <= 1:
            raise ValueError(
                f"--device-kv-fraction must be in (0, 1], got {self.device_kv_fraction}"
            )
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"--block-size must be a power of two, got {self.block_size}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"--dtype must be auto or one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if self.swap_layout not in SWAP_LAYOUTS:
            raise ValueError(
                f"--swap-layout must be one of {list(SWAP_LAYOUTS)}, got {self.swap_layout!r}"
            )
        shm.check_name(f"{shm.PREFIX}{self.deployment_id}-pool-{self.worker_id}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastswitch serve worker",
        description="One worker per accelerator: runs the model over its device KV pool.",
    )
    add_common_flags(p, listen="127.0.0.1:50071", metrics_port=9471)
    p.add_argument("--scheduler", default=env_default("--scheduler", ""), help="scheduler address")
    p.add_argument("--kvstore", default=env_default("--kvstore", ""), help="KV store address")
    p.add_argument("--model", default=env_default("--model", "tiny"), help="tiny or a HF dir")
    p.add_argument(
        "--device", default=env_default("--device", "auto"), help="auto, cpu, cuda or cuda:N"
    )
    p.add_argument("--dtype", default=env_default("--dtype", "auto"))
    p.add_argument(
        "--device-kv-blocks",
        type=int,
        default=env_default("--device-kv-blocks", None),
        help="KV pool size in blocks (default: CPU 1024; CUDA from --device-kv-fraction)",
    )
    p.add_argument(
        "--device-kv-fraction",
        type=float,
        default=env_default("--device-kv-fraction", 0.8),
        help="share of free GPU memory for the KV pool after the model is loaded",
    )
    p.add_argument("--block-size", type=int, default=env_default("--block-size", 16))
    p.add_argument(
        "--worker-id", default=env_default("--worker-id", f"{socket.gethostname()}-{os.getpid()}")
    )
    p.add_argument(
        "--advertise",
        default=env_default("--advertise", ""),
        help="address others use to reach this worker (default: --listen)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=env_default("--threads", 0),
        help="torch CPU threads (0: torch's default)",
    )
    p.add_argument(
        "--mode",
        default=env_default("--mode", "fastswitch"),
        choices=MODES,
        help="fastswitch: block-group swaps, async; vllm-baseline: per-layer copies inside the "
        "step (the defaults of --swap-layout and --swap-sync) (default %(default)s)",
    )
    p.add_argument(
        "--swap-layout",
        default=env_default("--swap-layout", ""),
        help="group: one copy per block run (FastSwitch); per-layer: one copy per block, layer "
        "and K/V (the vLLM-style baseline); default from --mode",
    )
    p.add_argument(
        "--swap-sync",
        action="store_true",
        default=env_default("--swap-sync", False),
        help="copy swaps inside the step, before the forward (the baseline); default: async, "
        "on a thread and stream of their own",
    )
    return p


def _flag(name: str, value: object) -> bool:
    """A boolean flag: True/False from argparse, or the string of its environment fallback."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    mode = mode_settings(args.mode)
    return WorkerConfig(
        listen=args.listen,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_level=args.log_level,
        deployment_id=args.deployment_id,
        scheduler=args.scheduler,
        kvstore=args.kvstore,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        device_kv_blocks=None if args.device_kv_blocks is None else int(args.device_kv_blocks),
        device_kv_fraction=args.device_kv_fraction,
        block_size=args.block_size,
        worker_id=args.worker_id,
        advertise=args.advertise or args.listen,
        threads=args.threads,
        swap_layout=args.swap_layout or mode.swap_layout.value,
        swap_sync=_flag("--swap-sync", args.swap_sync) or mode.swap_sync,
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device


class DevicePool:
    """The device KV pool and how another process maps it.

    CPU: a shared-memory file ``fastswitch-<deployment>-pool-<worker>`` (removed on close).
    CUDA: device memory exported as a CUDA IPC handle (pickled rebuild arguments).
    """

    def __init__(self, cfg: WorkerConfig, spec, model) -> None:  # type: ignore[no-untyped-def]
        device, dtype = model.device, model.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        block_bytes = spec.block_bytes(cfg.block_size, itemsize)
        num_blocks = cfg.device_kv_blocks or self._default_blocks(cfg, device, block_bytes)
        shape = (num_blocks, spec.num_layers, 2, cfg.block_size, spec.num_kv_heads, spec.head_dim)
        self._buf: shm.SharedBuffer | None = None
        if device.type == "cpu":
            name = f"{shm.PREFIX}{cfg.deployment_id}-pool-{cfg.worker_id}"
            if shm.remove_stale(name):
                log.warning("removed a stale pool file", extra={"shm": name})
            self._buf = shm.create(name, num_blocks * block_bytes, prefault=True)
            tensor = self._buf.as_tensor(dtype, shape)
            self.kind, self.handle = "shm", name.encode()
        else:
            tensor = torch.zeros(shape, dtype=dtype, device=device)
            self.kind, self.handle = "cuda_ipc", _cuda_ipc_handle(tensor)
        self.pool = KVPool(
            num_blocks=num_blocks,
            num_layers=spec.num_layers,
            block_size=cfg.block_size,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            dtype=dtype,
            device=device,
            tensor=tensor,
        )

    @staticmethod
    def _default_blocks(cfg: WorkerConfig, device: torch.device, block_bytes: int) -> int:
        if device.type == "cpu":
            return 1024
        free, _total = torch.cuda.mem_get_info(device)
        return max(1, int(free * cfg.device_kv_fraction) // block_bytes)

    def close(self) -> None:
        """Removes the shared-memory file (CPU) first, so nothing outlives the process; the
        mapping itself goes when the last tensor over it does (at the latest, at exit)."""
        if self._buf is not None:
            self._buf.unlink()
            try:
                self._buf.close()
            except BufferError:
                log.debug("pool tensors still alive; unmapped at exit")
            self._buf = None


def _cuda_ipc_handle(tensor: torch.Tensor) -> bytes:
    import pickle

    from torch.multiprocessing.reductions import reduce_tensor

    _rebuild, args = reduce_tensor(tensor)
    return pickle.dumps(args)


async def _register(  # type: ignore[no-untyped-def]
    cfg: WorkerConfig, spec, pool: DevicePool, store: kv_grpc.KVStoreStub
) -> kv.RegisterWorkerResponse:
    """Registers the worker and its pool with the node's KV store (swaps need the arena)."""
    resp = await store.RegisterWorker(
        kv.RegisterWorkerRequest(
            worker_id=cfg.worker_id,
            model_fingerprint=spec.fingerprint,
            block_bytes=pool.pool.block_bytes,
            device=str(pool.pool.device),
            pool_kind=pool.kind,
            pool_handle=pool.handle,
            pool_blocks=pool.pool.num_blocks,
        ),
        timeout=30,
    )
    log.info(
        "registered with the KV store",
        extra={"arena": resp.arena_name, "host_blocks": resp.num_host_blocks},
    )
    return resp


async def _unregister(cfg: WorkerConfig, store: kv_grpc.KVStoreStub) -> None:
    try:
        await store.UnregisterWorker(kv.UnregisterWorkerRequest(worker_id=cfg.worker_id), timeout=5)
    except grpc.aio.AioRpcError as err:
        log.warning("could not unregister", extra={"why": err.code().name})


class MappedArena:
    """This worker's mapping of the node's host arena: ``blocks`` is uint8
    ``[num_host_blocks, block_bytes]``. ``close`` drops the view and unmaps (the file is the
    store's: it stays)."""

    def __init__(self, resp: kv.RegisterWorkerResponse, block_bytes: int) -> None:
        if resp.block_bytes != block_bytes:
            raise ValueError(
                f"the KV store's arena has {resp.block_bytes}-byte blocks, this worker's pool "
                f"{block_bytes}"
            )
        self._buf = shm.open_existing(resp.arena_name)
        layout = ArenaLayout(resp.block_bytes, resp.num_host_blocks)
        self.blocks: torch.Tensor | None = layout.blocks_view(self._buf)

    def close(self) -> None:
        self.blocks = None
        try:
            self._buf.close()
        except BufferError:
            log.warning("arena views still alive; unmapped at exit")


def _open_swaps(cfg: WorkerConfig, pool: KVPool, arena: MappedArena) -> SwapEngine:
    assert arena.blocks is not None
    swaps = SwapEngine(pool, arena.blocks, layout=SwapLayout(cfg.swap_layout), sync=cfg.swap_sync)
    log.info(
        "swap engine ready",
        extra={
            "layout": cfg.swap_layout,
            "sync": cfg.swap_sync,
            "host_blocks": swaps.num_host_blocks,
        },
    )
    return swaps


async def _connect_store(  # type: ignore[no-untyped-def]
    cfg: WorkerConfig, spec, pool: DevicePool, cleanup: AsyncExitStack
) -> tuple[kv_grpc.KVStoreStub, SwapEngine]:
    """Registers with the KV store, maps its arena and starts the swap engine; ``cleanup``
    undoes it in reverse: close the engine (join its thread, unpin), unmap, unregister."""
    channel = grpc.aio.insecure_channel(cfg.kvstore)
    cleanup.push_async_callback(channel.close)
    store = kv_grpc.KVStoreStub(channel)
    resp = await _register(cfg, spec, pool, store)
    cleanup.push_async_callback(_unregister, cfg, store)
    arena = MappedArena(resp, pool.pool.block_bytes)
    cleanup.callback(arena.close)
    swaps = _open_swaps(cfg, pool.pool, arena)
    cleanup.callback(swaps.close)
    return store, swaps


async def serve(cfg: WorkerConfig) -> int:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    spec, model = load_model(cfg.model, device=device, dtype=_DTYPES.get(cfg.dtype))
    pool = DevicePool(cfg, spec, model)
    telemetry = Telemetry(str(device))
    service = GrpcService(
        "worker", listen=cfg.listen, metrics_port=cfg.metrics_port, metrics_host=cfg.metrics_host
    )
    code = 0
    async with AsyncExitStack() as cleanup:
        cleanup.callback(pool.close)
        cleanup.callback(telemetry.close)
        service.install_signal_handlers()
        store, swaps = None, None
        if cfg.kvstore:
            store, swaps = await _connect_store(cfg, spec, pool, cleanup)
        executor = StepExecutor(Engine(model, spec, pool.pool), swaps)
        on_step = _serve_stats(cfg, service, executor, pool, telemetry)
        hello = wk.WorkerHello(
            worker_id=cfg.worker_id,
            model_fingerprint=spec.fingerprint,
            num_blocks=pool.pool.num_blocks,
            block_size=cfg.block_size,
            block_bytes=pool.pool.block_bytes,
            max_model_len=spec.max_model_len,
            device=str(device),
            address=cfg.advertise,
            vocab_size=spec.vocab_size,
        )
        stop = asyncio.Event()
        link = SchedulerLink(
            cfg.scheduler,
            hello,
            executor,
            on_state=service.set_serving,
            on_step=on_step,
            store=store,
        )
        await service.start()
        cleanup.push_async_callback(service.stop, 2.0)
        link_task = asyncio.create_task(link.run(stop), name="scheduler-link")
        signal_task = asyncio.create_task(service.wait_for_signal(), name="signal")
        await asyncio.wait({link_task, signal_task}, return_when=asyncio.FIRST_COMPLETED)
        # Ordered shutdown: NOT_SERVING, leave the scheduler, stop serving, close the swap
        # engine, unmap the arena, unregister, free the pool.
        service.set_serving(False)
        stop.set()
        signal_task.cancel()
        try:
            await link_task
        except LinkRejected as err:
            log.error("the scheduler rejected this worker", extra={"why": str(err)})
            code = 3
    return code


def _serve_stats(
    cfg: WorkerConfig,
    service: GrpcService,
    executor: StepExecutor,
    pool: DevicePool,
    telemetry: Telemetry,
) -> Callable[[wk.StepResult], None]:
    """Adds the Worker stats servicer and the step metrics; returns the per-step hook."""
    steps = Counter("fastswitch_worker_steps", "Steps executed", registry=service.registry)
    step_s = Histogram("fastswitch_worker_step_seconds", "Step time", registry=service.registry)
    live = Gauge("fastswitch_worker_live_seqs", "Sequences resident", registry=service.registry)
    copy_s = Counter(
        "fastswitch_worker_swap_copy_seconds",
        "Time the swap engine spent copying (async: on its own thread, beside the steps)",
        registry=service.registry,
    )
    wait_s = Counter(
        "fastswitch_worker_swap_wait_seconds",
        "Time steps spent on swaps before their forward (sync: the copies; async: submitting)",
        registry=service.registry,
    )
    copied = 0.0  # the part of the swap engine's copy_seconds already counted

    def on_step(result: wk.StepResult) -> None:
        nonlocal copied
        steps.inc()
        step_s.observe(result.timing.step_s)
        live.set(executor.engine.num_seqs)
        wait_s.inc(result.timing.swap_wait_s)
        if executor.swaps is not None:
            copy_s.inc(executor.swaps.copy_seconds - copied)
            copied = executor.swaps.copy_seconds

    def snapshot() -> wk.WorkerStatsResponse:
        out = wk.WorkerStatsResponse(
            worker_id=cfg.worker_id,
            device=str(pool.pool.device),
            num_blocks=pool.pool.num_blocks,
            live_seqs=executor.engine.num_seqs,
            steps=executor.steps,
            swap_out_bytes=executor.swap_out_bytes,
            swap_in_bytes=executor.swap_in_bytes,
            gpu=telemetry.unavailable or "",
        )
        gpu = telemetry.read()
        if gpu is not None:
            out.gpu = gpu.name
            out.gpu_util = gpu.utilization
            out.gpu_mem_used = gpu.memory_used
            out.gpu_mem_total = gpu.memory_total
        return out

    service.add(
        wk_grpc.add_WorkerServicer_to_server,
        WorkerServicer(snapshot),
        "fastswitch.worker.v1.Worker",
    )
    return on_step


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("worker", args.log_level)
    try:
        cfg = config_from_args(args)
        return run(serve(cfg))
    except (ValueError, FileNotFoundError) as err:
        print(f"fastswitch serve worker: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
