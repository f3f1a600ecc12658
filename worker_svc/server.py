"""Process entry and life cycle of a worker (``python -m worker_svc``).

(--device cuda:auto: claim a free GPU) -> resolve the device -> load the model
  -> allocate the device KV pool
  -> (with --kvstore) register with the KV store, map its arena, start the swap engine
  -> measure its prefill and copy costs (calibrate.py: for the scheduler's fetch-or-compute)
  -> gRPC service up (health NOT_SERVING) -> join the scheduler (SERVING while joined)
  -> execute its step plans until SIGTERM / SIGINT or a rejection
  -> shutdown in order: NOT_SERVING, leave the scheduler, stop serving, close the swap
     engine, unmap the arena, unregister, free the pool -> exit (0, or 3 when rejected)
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from functools import partial

import torch

from proto import worker_pb2_grpc as wk_grpc
from servekit.logs import setup_logging
from servekit.names import SwapLayout
from servekit.service import GrpcService, run
from worker_svc.calibrate import measure
from worker_svc.config import WorkerConfig, build_parser, config_from_args
from worker_svc.device_pool import DevicePool, resolve_device, torch_dtype
from worker_svc.engine import Engine
from worker_svc.executor import StepExecutor
from worker_svc.gpu_claim import AUTO, claim_gpu
from worker_svc.link import LinkRejected, SchedulerLink
from worker_svc.loader import load_model
from worker_svc.metrics import StepMetrics, stats_snapshot
from worker_svc.plan import WorkerHello
from worker_svc.servicer import SERVICE_NAME, WorkerServicer
from worker_svc.store_client import connect_store
from worker_svc.telemetry import Telemetry

log = logging.getLogger(__name__)


async def serve(cfg: WorkerConfig) -> int:
    """The whole life of one worker process; returns the exit status. With ``--device
    cuda:auto`` it first claims a free GPU (``gpu_claim.py``) and holds it to the end."""
    if cfg.device != AUTO:
        return await _serve(cfg, cfg.device)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    claim = claim_gpu(count, cfg.deployment_id)
    try:
        return await _serve(cfg, claim.device)
    finally:
        claim.release()


async def _serve(cfg: WorkerConfig, device_name: str) -> int:
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(device_name)
    spec, model = load_model(cfg.model, device=device, dtype=torch_dtype(cfg.dtype))
    pool = DevicePool(
        spec,
        model,
        block_size=cfg.block_size,
        num_blocks=cfg.device_kv_blocks,
        kv_fraction=cfg.device_kv_fraction,
        deployment_id=cfg.deployment_id,
        worker_id=cfg.worker_id,
    )
    telemetry = Telemetry(str(device))
    service = GrpcService(
        "worker",
        listen=cfg.listen,
        metrics_port=cfg.metrics_port,
        metrics_host=cfg.metrics_host,
        interceptors=cfg.plane.server_interceptors(),
        credentials=cfg.plane.server_credentials(cfg.listen),
    )
    code = 0
    async with AsyncExitStack() as cleanup:
        cleanup.callback(pool.close)
        cleanup.callback(telemetry.close)
        service.install_signal_handlers()
        store, swaps = None, None
        if cfg.kvstore is not None:
            store = await connect_store(
                cfg.kvstore,
                worker_id=cfg.worker_id,
                fingerprint=spec.fingerprint,
                pool=pool,
                swap_layout=SwapLayout(cfg.swap_layout),
                swap_sync=cfg.swap_sync,
                cleanup=cleanup,
                plane=cfg.plane,
            )
            swaps = store.swaps
        engine = Engine(model, spec, pool.pool)
        costs = measure(engine, SwapLayout(cfg.swap_layout), cfg.swap_sync)
        log.info("device costs measured", extra=costs._asdict())
        executor = StepExecutor(engine, swaps)
        metrics = StepMetrics(service.registry, executor, model=spec.name, worker=cfg.worker_id)
        snapshot = partial(stats_snapshot, cfg.worker_id, executor, pool, telemetry)
        service.add(wk_grpc.add_WorkerServicer_to_server, WorkerServicer(snapshot), SERVICE_NAME)
        hello = WorkerHello(
            worker_id=cfg.worker_id,
            model_fingerprint=spec.fingerprint,
            num_blocks=pool.pool.num_blocks,
            block_size=cfg.block_size,
            block_bytes=pool.pool.block_bytes,
            max_model_len=spec.max_model_len,
            device=str(device),
            address=cfg.advertise,
            vocab_size=spec.vocab_size,
            prefill_tokens_per_s=costs.prefill_tokens_per_s,
            copy_latency_s=costs.copy_latency_s,
            copy_bytes_per_s=costs.copy_bytes_per_s,
        )
        stop = asyncio.Event()
        link = SchedulerLink(
            cfg.scheduler,
            hello,
            executor,
            on_state=service.set_serving,
            on_step=metrics.on_step,
            store=store,
            plane=cfg.plane,
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
