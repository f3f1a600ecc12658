"""The HTTP door's own Python per request: its ASGI app driven directly, without uvicorn, gRPC
or sockets, so what is measured is ``api_svc`` alone (the gate, validation, preparation, the
SSE loop and its bytes).

Each request is a streamed completion (a prompt of token ids) or a streamed chat completion
(one user message through the tiny model's template and tokenizer) whose scheduler stream is
scripted: ``--tokens`` messages of one token each, ready at once. ``send`` drops the bytes.
Reported: CPU microseconds per request (process time), the median of ``--repeats`` rounds.
``benchmarks/http_door.py`` measures the whole door (uvicorn, the gRPC client, the kernel)
against gRPC; this one isolates the part the door's code decides.

    .venv/bin/python benchmarks/door_asgi.py [--requests 3000] [--repeats 5] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Send

from api_svc.app import create_app
from api_svc.auth import KeyRing
from api_svc.door import Door, DoorConfig
from api_svc.metrics import ApiMetrics
from proto import scheduler_pb2 as pb
from servekit.modelspec import load_model_spec
from servekit.tokenizer import load_tokenizer


def scripted(tokens: int) -> list[pb.GenerateChunk]:
    """The scheduler's messages of one answer: a token each, the last one final."""
    msgs = [pb.GenerateChunk(request_id="r", token_ids=[i], text=f" w{i}") for i in range(tokens)]
    msgs[-1].finish_reason = pb.FINISH_REASON_LENGTH
    msgs[-1].metrics.prompt_tokens = 32
    return msgs


class ScriptedStream:
    """What the door reads of a scheduler stream, every message ready at once."""

    def __init__(self, msgs: list[pb.GenerateChunk]) -> None:
        self._msgs = iter(msgs)

    async def read_message(self) -> pb.GenerateChunk | None:
        return next(self._msgs, None)

    def cancel(self) -> None:
        pass

    async def __aenter__(self) -> ScriptedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


class ScriptedClient:
    """What the door uses of the scheduler client to answer a generation request."""

    def __init__(self, msgs: list[pb.GenerateChunk]) -> None:
        self._msgs = msgs

    def generate_stream(self, **_: Any) -> ScriptedStream:
        return ScriptedStream(self._msgs)


def body(chat: bool, tokens: int) -> tuple[str, bytes]:
    common = {"model": "tiny", "max_tokens": tokens, "stream": True, "temperature": 0}
    if chat:
        doc = {**common, "messages": [{"role": "user", "content": "hello there " * 8}]}
        return "/v1/chat/completions", json.dumps(doc).encode()
    doc = {**common, "prompt": list(range(40, 72)), "ignore_eos": True}
    return "/v1/completions", json.dumps(doc).encode()


async def drop(_: Message) -> None:
    """The bench's ``send``: the bytes go nowhere."""


async def one(app: ASGIApp, path: str, data: bytes, send: Send = drop) -> None:
    """One request through the app; the client stays until the answer ends."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))],
    }
    read = False

    async def receive() -> Message:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": data, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves; the door's watcher is cancelled
        raise AssertionError("unreachable")

    await app(scope, receive, send)


def scripted_app(tokens: int) -> ASGIApp:
    """The door's app over a scheduler client whose every stream is :func:`scripted`."""
    door = Door(
        ScriptedClient(scripted(tokens)),  # type: ignore[arg-type]
        load_tokenizer("tiny"),
        load_model_spec("tiny"),
        DoorConfig(model_names=("tiny",)),
    )
    metrics = ApiMetrics(CollectorRegistry(), "tiny")
    app, _ = create_app(door, KeyRing(), metrics, max_body_bytes=1 << 20, max_in_flight=1 << 20)
    return app


async def cpu_per_request(chat: bool, requests: int, tokens: int) -> float:
    """Microseconds of this process's CPU per request, after a warm-up."""
    app = scripted_app(tokens)
    path, data = body(chat, tokens)
    for _ in range(200):
        await one(app, path, data)
    t0 = time.process_time()
    for _ in range(requests):
        await one(app, path, data)
    return (time.process_time() - t0) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per round (3000)")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported (5)")
    p.add_argument("--tokens", type=int, default=32, help="streamed tokens per request (32)")
    a = p.parse_args(argv)
    if min(a.requests, a.repeats, a.tokens) < 1:
        p.error("--requests, --repeats and --tokens must be >= 1")
    for chat in (False, True):
        rounds = [uvloop.run(cpu_per_request(chat, a.requests, a.tokens)) for _ in range(a.repeats)]
        kind = "chat completion" if chat else "completion"
        print(
            f"door's own Python per streamed {kind} ({a.tokens} tokens): "
            f"{statistics.median(rounds):.0f} us CPU (median of {a.repeats} rounds)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
