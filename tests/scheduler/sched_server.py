"""A real in-process scheduler (frontend, servicers, the public handlers) on 127.0.0.1:0, for the
tests that talk to it over gRPC; pair it with ``sched_fakes.LinkWorker``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry

from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.frontend import Frontend
from scheduler_svc.handlers import add_fastswitch_servicer
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.policy import make_policy
from scheduler_svc.servicer import REJECT_REASONS, FastSwitchServicer, StepLinkServicer
from servekit.service import GrpcService
from servekit.tokenizer import load_tokenizer

FINGERPRINT = "test-model"
VOCAB = 262
MAX_LEN = 256


@asynccontextmanager
async def scheduler_server(
    *,
    policy: str = "vtc",
    core: CoreConfig | None = None,
    max_message_mb: int = 64,
    **frontend: Any,
) -> AsyncIterator[tuple[str, Frontend, FastSwitchServicer]]:
    """Serves until the block ends, then shuts down in the server's order (frontend first)."""
    registry = CollectorRegistry()
    sched = SchedulerCore(core or CoreConfig(), make_policy(policy), eos_token_ids=[257])
    front = Frontend(
        sched,
        load_tokenizer("tiny"),
        vocab_size=VOCAB,
        max_model_len=MAX_LEN,
        max_tokens_limit=128,
        **frontend,
    )
    service = GrpcService(
        "scheduler-test",
        listen="127.0.0.1:0",
        metrics_port=None,
        registry=registry,
        max_message_mb=max_message_mb,
    )
    metrics = SchedulerMetrics(registry, sched, model="tiny", reject_reasons=REJECT_REASONS)
    front.on_step = metrics.on_step
    front.on_finish = metrics.on_finish
    servicer = FastSwitchServicer(front, metrics, policy=policy, mode="fastswitch")
    service.add(add_fastswitch_servicer, servicer, "fastswitch.v1.FastSwitch")
    service.add(
        wk_grpc.add_StepLinkServicer_to_server,
        StepLinkServicer(front, model_fingerprint=FINGERPRINT),
        "fastswitch.worker.v1.StepLink",
    )
    await service.start()
    service.set_serving(True)
    try:
        yield f"127.0.0.1:{service.bound_port}", front, servicer
    finally:
        await front.shutdown()
        await service.stop(0.5)
