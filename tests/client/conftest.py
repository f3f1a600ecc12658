"""A fake FastSwitch scheduler on an in-process grpc.aio server, for the SDK's tests.

Behaviour by prompt text (Generate) or message (Chat):
  "invalid" / "notfound" / "exhausted" / "unavailable"  abort with that status code
  "slow"      sleeps 10 s before the first chunk (deadline tests)
  "forever"   streams a token every 10 ms until the client cancels (recorded in `cancelled`)
  otherwise   max_tokens tokens 100, 101, ... one per chunk; the last chunk carries
              finish_reason LENGTH and the metrics; a token in stop_token_ids ends it with STOP
              and an empty final chunk.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import grpc
import pytest

from proto import scheduler_pb2 as pb
from proto import scheduler_pb2_grpc as pb_grpc

_ABORTS = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "notfound": grpc.StatusCode.NOT_FOUND,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


class FakeFastSwitch(pb_grpc.FastSwitchServicer):
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.generate_requests: list[pb.GenerateRequest] = []
        self.chat_requests: list[pb.ChatRequest] = []
        self.started: dict[str, asyncio.Event] = {}
        self.cancelled: set[str] = set()
        self.cancel_seen = asyncio.Event()
        self.running: set[str] = set()
        self.priorities: dict[str, int] = {}
        self.conversations: dict[str, list[str]] = {}
        self.ended: list[str] = []
        self.max_model_len = 2048  # 0: an older server that does not report it
        self.cancels: list[pb.CancelRequest] = []
        self.priority_requests: list[pb.SetPriorityRequest] = []
        # (method, its `authorization` metadata or None), one per call, in order.
        self.auth: list[tuple[str, str | None]] = []

    async def Generate(self, request, context):
        self.generate_requests.append(request)
        rid = request.request_id or f"req-{next(self._ids)}"
        prompt = request.text if request.WhichOneof("prompt") == "text" else ""
        async for chunk in self._complete(rid, prompt, request.sampling, context):
            yield chunk

    async def Chat(self, request, context):
        self.chat_requests.append(request)
        conv = request.conversation_id
        if not conv:
            conv = f"conv-{next(self._ids)}"
            self.conversations[conv] = []
        elif conv not in self.conversations:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown conversation {conv}")
        self.conversations[conv].append(request.message)
        rid = request.request_id or f"req-{next(self._ids)}"
        async for chunk in self._complete(rid, request.message, request.sampling, context):
            chunk.conversation_id = conv
            yield chunk

    async def _complete(self, rid, prompt, sampling, context) -> AsyncIterator[pb.GenerateChunk]:
        if prompt in _ABORTS:
            await context.abort(_ABORTS[prompt], f"fake says {prompt}")
        started = self.started.setdefault(rid, asyncio.Event())
        started.set()
        self.running.add(rid)
        try:
            if prompt == "slow":
                await asyncio.sleep(10)
            if prompt == "forever":
                for token in itertools.count():
                    yield pb.GenerateChunk(request_id=rid, token_ids=[token], text="x")
                    await asyncio.sleep(0.01)
            for i in range(sampling.max_tokens):
                token = 100 + i
                if token in sampling.stop_token_ids:
                    yield pb.GenerateChunk(request_id=rid, token_ids=[token], text=f"t{token} ")
                    yield self._final(rid, pb.FINISH_REASON_STOP, i + 1)
                    return
                if i == sampling.max_tokens - 1:
                    final = self._final(rid, pb.FINISH_REASON_LENGTH, i + 1)
                    final.token_ids.append(token)
                    final.text = f"t{token} "
                    yield final
                    return
                yield pb.GenerateChunk(request_id=rid, token_ids=[token], text=f"t{token} ")
        except asyncio.CancelledError:
            self.cancelled.add(rid)
            self.cancel_seen.set()
            raise
        finally:
            self.running.discard(rid)

    @staticmethod
    def _final(rid: str, reason: int, n: int) -> pb.GenerateChunk:
        metrics = pb.RequestMetrics(
            queue_s=0.001,
            ttft_s=0.01,
            tbt_s=[0.002] * (n - 1),
            e2e_s=0.05,
            prompt_tokens=5,
            cached_prompt_tokens=2,
            preemptions=1,
            swap_outs=1,
            swap_ins=1,
        )
        return pb.GenerateChunk(
            request_id=rid, finish_reason=reason, metrics=metrics, worker_id="worker-0"
        )

    async def EndConversation(self, request, context):
        if request.conversation_id not in self.conversations:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown conversation")
        del self.conversations[request.conversation_id]
        self.ended.append(request.conversation_id)
        return pb.EndConversationResponse(freed_blocks=3)

    async def Cancel(self, request, context):
        self.cancels.append(request)
        return pb.CancelResponse(cancelled=request.request_id in self.running)

    async def SetPriority(self, request, context):
        self.priority_requests.append(request)
        if request.request_id not in self.running:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown request {request.request_id}")
        self.priorities[request.request_id] = request.priority
        return pb.SetPriorityResponse()

    async def GetStats(self, request, context):
        return pb.StatsResponse(
            waiting=1,
            running=2,
            finished=7,
            preemptions=4,
            policy="vtc",
            mode="fastswitch",
            max_model_len=self.max_model_len,
            tenants=[
                pb.TenantStats(tenant="alice", virtual_counter=12.5, output_tokens=30),
                pb.TenantStats(tenant="bob", virtual_counter=10.0, prompt_tokens=8),
            ],
            workers=[pb.WorkerStats(worker_id="worker-0", device="cpu", num_blocks=64)],
        )


class _AuthRecorder(grpc.aio.ServerInterceptor):
    """Records each call's method and `authorization` metadata in the fake."""

    def __init__(self, fake: FakeFastSwitch) -> None:
        self._fake = fake

    async def intercept_service(self, continuation, details):
        metadata = dict(details.invocation_metadata or ())
        self._fake.auth.append((details.method.rsplit("/", 1)[-1], metadata.get("authorization")))
        return await continuation(details)


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[str, FakeFastSwitch]]:
    """(address, fake) of a fake scheduler listening on 127.0.0.1:<free port>."""
    fake = FakeFastSwitch()
    server = grpc.aio.server(interceptors=[_AuthRecorder(fake)])
    pb_grpc.add_FastSwitchServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        await server.stop(None)
