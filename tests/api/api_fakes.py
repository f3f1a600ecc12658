"""A scheduler client the HTTP door can talk to in-process: scripted streams, recorded calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from api_svc.app import create_app
from api_svc.auth import KeyRing
from api_svc.door import Door, DoorConfig
from api_svc.metrics import ApiMetrics
from client.errors import Cancelled, FastSwitchError
from client.results import FinishReason, GenerationChunk, RequestMetrics, Stats
from proto import scheduler_pb2 as pb
from servekit.modelspec import load_model_spec
from servekit.tokenizer import load_tokenizer


class FakeStream:
    """Yields the scripted chunks (waiting `gap_s` before each); records cancel()."""

    def __init__(self, chunks: Sequence[GenerationChunk | Exception], gap_s: float) -> None:
        self._chunks = list(chunks)
        self._gap_s = gap_s
        self.cancelled = False

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self.cancelled:
            raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
        if not self._chunks:
            raise StopAsyncIteration
        await asyncio.sleep(self._gap_s)
        if self.cancelled:  # as a gRPC read that cancel() ends
            raise Cancelled(grpc.StatusCode.CANCELLED, "stream cancelled by the client")
        item = self._chunks.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async def read_message(self) -> pb.GenerateChunk | None:
        """The next scripted chunk as the scheduler's message (GenerationStream.read_message)."""
        try:
            return to_proto(await self.__anext__())
        except StopAsyncIteration:
            return None

    def cancel(self) -> None:
        self.cancelled = True

    async def aclose(self) -> None:
        if self._chunks:
            self.cancelled = True

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def to_proto(chunk: GenerationChunk) -> pb.GenerateChunk:
    """The message GenerationChunk.from_proto would read back as ``chunk``."""
    msg = pb.GenerateChunk(
        request_id=chunk.request_id,
        token_ids=chunk.token_ids,
        text=chunk.text,
        conversation_id=chunk.conversation_id or "",
        worker_id=chunk.worker_id or "",
    )
    if chunk.finish_reason is not None:
        msg.finish_reason = _FINISH[chunk.finish_reason]
    if chunk.metrics is not None:
        m = chunk.metrics
        msg.metrics.CopyFrom(
            pb.RequestMetrics(
                prompt_tokens=m.prompt_tokens, cached_prompt_tokens=m.cached_prompt_tokens
            )
        )
    return msg


_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ABORTED: pb.FINISH_REASON_ABORTED,
}


def reply(
    texts: Sequence[str],
    *,
    finish: FinishReason = FinishReason.LENGTH,
    prompt: int = 3,
    cached: int = 0,
) -> list[GenerationChunk]:
    """Chunks of one token each, then the final chunk's finish reason and metrics."""
    out = [GenerationChunk("r", (i,), t) for i, t in enumerate(texts)]
    last = out[-1]
    out[-1] = GenerationChunk(
        last.request_id,
        last.token_ids,
        last.text,
        finish,
        RequestMetrics(prompt_tokens=prompt, cached_prompt_tokens=cached),
    )
    return out


@dataclass
class FakeClient:
    """What Door uses of AsyncClient: generate_stream and stats."""

    script: list[GenerationChunk | Exception] = field(default_factory=lambda: reply(["a", "b"]))
    gap_s: float = 0.0
    workers: int = 1
    calls: list[dict[str, Any]] = field(default_factory=list)
    streams: list[FakeStream] = field(default_factory=list)

    def generate_stream(
        self, prompt: Any = None, prompt_token_ids: Any = None, **kw: Any
    ) -> FakeStream:
        self.calls.append({"prompt_token_ids": list(prompt_token_ids or ()), **kw})
        stream = FakeStream(self.script, self.gap_s)
        self.streams.append(stream)
        return stream

    async def stats(self, *, timeout_s: float | None = None) -> Stats:
        if self.workers < 0:
            raise FastSwitchError(grpc.StatusCode.UNAVAILABLE, "nothing listening")
        workers = [pb.WorkerStats(worker_id=f"w{i}") for i in range(self.workers)]
        return Stats.from_proto(pb.StatsResponse(workers=workers))


def make_app(
    client: FakeClient,
    *,
    keys: dict[str, str] | None = None,
    max_in_flight: int = 64,
    max_body_bytes: int = 1 << 20,
):
    door = Door(
        client,
        load_tokenizer("tiny"),
        load_model_spec("tiny"),  # type: ignore[arg-type]
        DoorConfig(model_names=("tiny", "alias")),
    )
    metrics = ApiMetrics(CollectorRegistry(), "tiny")
    app, state = create_app(
        door, KeyRing(keys), metrics, max_body_bytes=max_body_bytes, max_in_flight=max_in_flight
    )
    return app, state, metrics
