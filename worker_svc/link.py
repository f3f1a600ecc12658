"""The worker's end of the step stream: join the scheduler, then plan in → result out, forever.

The worker dials the scheduler (so workers can join and leave while the system runs). If the
stream breaks, every sequence is forgotten (the scheduler recomputes them) and the worker dials
again with backoff. A rejection (another model, a duplicate id) is fatal: LinkRejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from worker_svc.executor import StepExecutor

log = logging.getLogger(__name__)

_FATAL = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class LinkRejected(RuntimeError):
    """The scheduler refused this worker for good (the message says why)."""


class SchedulerLink:
    def __init__(
        self,
        scheduler: str,
        hello: wk.WorkerHello,
        executor: StepExecutor,
        *,
        on_state: Callable[[bool], None],
        on_step: Callable[[wk.StepResult], None] | None = None,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._target = scheduler
        self._hello = hello
        self._executor = executor
        self._on_state = on_state
        self._on_step = on_step
        self._max_backoff_s = max_backoff_s
        # Steps run on one thread of their own: torch releases the GIL, the loop stays live.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastswitch-step")

    async def run(self, stop: asyncio.Event) -> None:
        """Keeps the worker joined until `stop` is set. Raises LinkRejected."""
        backoff = 0.05
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    backoff = 0.05
                except grpc.aio.AioRpcError as err:
                    if err.code() in _FATAL:
                        raise LinkRejected(f"{err.code().name}: {err.details()}") from err
                    log.info("scheduler unreachable", extra={"why": err.code().name})
                finally:
                    self._on_state(False)
                    self._executor.reset()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    backoff = min(backoff * 2, self._max_backoff_s)
        finally:
            self._thread.shutdown(wait=True)

    async def _session(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(self._target) as channel:
            call = wk_grpc.StepLinkStub(channel).Connect()
            stopper = loop.create_task(stop.wait())
            try:
                await call.write(wk.WorkerMessage(hello=self._hello))
                sent = time.perf_counter()
                while True:
                    reader = loop.create_task(call.read())
                    done, _ = await asyncio.wait(
                        {reader, stopper}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if reader not in done:
                        reader.cancel()
                        call.cancel()
                        return
                    msg = reader.result()
                    if msg is grpc.aio.EOF or msg.HasField("goodbye"):
                        log.info("scheduler closed the step stream")
                        return
                    if msg.HasField("accepted"):
                        log.info("joined the scheduler", extra={"scheduler": self._target})
                        self._on_state(True)
                        continue
                    received = time.perf_counter()
                    result = await loop.run_in_executor(self._thread, self._executor.run, msg.plan)
                    result.timing.idle_s = received - sent
                    await call.write(wk.WorkerMessage(result=result))
                    sent = time.perf_counter()
                    if self._on_step is not None:
                        self._on_step(result)
            finally:
                stopper.cancel()
