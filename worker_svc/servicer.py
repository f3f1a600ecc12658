"""gRPC adapter of the worker's own API (stats); the step stream is the worker's client side."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc


class WorkerServicer(wk_grpc.WorkerServicer):
    def __init__(self, snapshot: Callable[[], wk.WorkerStatsResponse]) -> None:
        self._snapshot = snapshot

    async def GetWorkerStats(
        self, request: wk.WorkerStatsRequest, context: grpc.aio.ServicerContext
    ) -> wk.WorkerStatsResponse:
        return self._snapshot()
