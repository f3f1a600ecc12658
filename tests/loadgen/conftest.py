"""A fake FastSwitch scheduler on an in-process grpc.aio server, for the load generator's runner
and CLI tests (no model, no processes).

Generate (and each request of GenerateMany) streams ``max_tokens`` tokens, one per chunk,
``token_delay_s`` apart; the last chunk carries finish_reason LENGTH and metrics. Knobs on the fake:
  fail_after   requests after this many are aborted with UNAVAILABLE (a target failing mid-run)
  hang         streams never end (until the client cancels)
  chat_served  Chat answers like Generate (conversation ids conv-N); else UNIMPLEMENTED
  max_model_len      the context GetStats reports (0: not reported, an older server)
  swap_bytes_avoided swap-out bytes not copied again, per finished request (GetStats)
  workers            ids of the workers GetStats lists (one by default)
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from proto import scheduler_pb2 as pb
from proto import scheduler_pb2_grpc as pb_grpc
from scheduler_svc.errors import Unavailable
from scheduler_svc.many import ManyCall
from scheduler_svc.servicer import status_for


class FakeScheduler(pb_grpc.FastSwitchServicer):
    def __init__(self) -> None:
        self.token_delay_s = 0.001
        self.fail_after: int | None = None
        self.hang = False
        self.chat_served = False
        self.max_model_len = 0
        self.swap_bytes_avoided = 0
        self.workers = ["worker-0"]
        self.requests: list[pb.GenerateRequest] = []
        self.chats: list[pb.ChatRequest] = []
        self.priorities: list[tuple[str, int]] = []
        self.cancelled: set[str] = set()
        self.auth: list[str | None] = []  # each call's `authorization` metadata, in order
        self.running: set[str] = set()
        self.max_running = 0
        self.finished = 0
        self._ids = itertools.count()

    async def Generate(self, request, context):
        self.requests.append(request)
        async for chunk in self._stream(request.request_id, request.sampling, context):
            yield chunk

    async def GenerateMany(self, requests, context):
        """Generate for each tagged request, multiplexed as the scheduler does (its ManyCall)."""

        async def start(request):
            self.requests.append(request)
            return request

        async def chunks(request):
            async for chunk in self._stream(request.request_id, request.sampling, None):
                yield chunk

        async def close(request):
            pass

        call = ManyCall(
            open=start, chunks=chunks, close=close, code_of=status_for, on_rejected=lambda e: None
        )
        async for message in call.run(requests):
            yield message

    async def Chat(self, request, context):
        if not self.chat_served:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "conversations are not served yet")
        self.chats.append(request)
        conv = request.conversation_id or f"conv-{next(self._ids)}"
        async for chunk in self._stream(request.request_id, request.sampling, context):
            chunk.conversation_id = conv
            yield chunk

    async def _stream(self, rid, sampling, context) -> AsyncIterator[pb.GenerateChunk]:
        n = len(self.requests) + len(self.chats)
        if self.fail_after is not None and n > self.fail_after:
            if context is None:  # a request of GenerateMany: its tag fails
                raise Unavailable("fake is down")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fake is down")
        self.running.add(rid)
        self.max_running = max(self.max_running, len(self.running))
        try:
            for i in range(sampling.max_tokens):
                await asyncio.sleep(self.token_delay_s)
                while self.hang:
                    await asyncio.sleep(0.01)
                if i == sampling.max_tokens - 1:
                    metrics = pb.RequestMetrics(
                        ttft_s=0.001, tbt_s=[0.001] * i, prompt_tokens=3, queue_s=0.0005
                    )
                    self.finished += 1
                    yield pb.GenerateChunk(
                        request_id=rid,
                        token_ids=[65 + i % 26],
                        finish_reason=pb.FINISH_REASON_LENGTH,
                        metrics=metrics,
                        worker_id="worker-0",
                    )
                else:
                    yield pb.GenerateChunk(request_id=rid, token_ids=[65 + i % 26])
        except asyncio.CancelledError:
            self.cancelled.add(rid)
            raise
        finally:
            self.running.discard(rid)

    async def SetPriority(self, request, context):
        if request.request_id not in self.running:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown request")
        self.priorities.append((request.request_id, request.priority))
        return pb.SetPriorityResponse()

    async def EndConversation(self, request, context):
        return pb.EndConversationResponse(freed_blocks=1)

    async def GetStats(self, request, context):
        return pb.StatsResponse(
            finished=self.finished,
            preemptions=2 * self.finished,
            swap_out_bytes=1024 * self.finished,
            swap_bytes_avoided=self.swap_bytes_avoided * self.finished,
            max_model_len=self.max_model_len,
            policy="vtc",
            mode="fastswitch",
            workers=[
                pb.WorkerStats(worker_id=w, device="cpu", num_blocks=64) for w in self.workers
            ],
        )


class _AuthRecorder(grpc.aio.ServerInterceptor):
    def __init__(self, fake: FakeScheduler) -> None:
        self._fake = fake

    async def intercept_service(self, continuation, details):
        self._fake.auth.append(dict(details.invocation_metadata or ()).get("authorization"))
        return await continuation(details)


@pytest.fixture
def lg_fake() -> Iterator[tuple[str, FakeScheduler]]:
    """(address, fake) of a fake scheduler on 127.0.0.1:<free port>, served from a loop of its
    own in a thread, so that both async tests and the CLI's own asyncio.run can reach it."""
    fake = FakeScheduler()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lg-fake", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[_AuthRecorder(fake)])
        pb_grpc.add_FastSwitchServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
