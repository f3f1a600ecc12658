"""gRPC adapter of the worker's own API (stats); the step stream is the worker's client side."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from worker_svc.convert import stats_to_proto
from worker_svc.metrics import WorkerStats

SERVICE_NAME = "fastswitch.worker.v1.Worker"


class WorkerServicer(wk_grpc.WorkerServicer):
    """Answers ``GetWorkerStats`` from ``snapshot`` (read on the event loop, per call)."""

    def __init__(self, snapshot: Callable[[], WorkerStats]) -> None:
        self._snapshot = snapshot

    async def GetWorkerStats(
        self, request: wk.WorkerStatsRequest, context: grpc.aio.ServicerContext
    ) -> wk.WorkerStatsResponse:
        return stats_to_proto(self._snapshot())
