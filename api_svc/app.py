"""The HTTP application: OpenAI's routes over a :class:`~api_svc.door.Door`.

Every request first passes the :class:`Gate` (pure ASGI, so streaming and disconnects are
untouched): the API key, a body-size limit, draining (503) and the in-flight limit (429), and the
request metrics. Then FastAPI validates the body against :mod:`api_svc.protocol` and a route asks
the door for a scheduler stream. Every error is OpenAI's JSON (:mod:`api_svc.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_svc.answers import Shape
from api_svc.auth import KeyRing
from api_svc.door import Door, Prepared, Usage, finish_reason
from api_svc.errors import ApiError, from_sdk
from api_svc.metrics import ApiMetrics
from api_svc.protocol import ChatCompletionRequest, CompletionRequest
from api_svc.sse import DONE, ClientGone, EventStream, event, unless_disconnected
from client.errors import FastSwitchError
from client.results import FinishReason, GenerationChunk
from client.stream import GenerationStream
from servekit.config import package_version

log = logging.getLogger(__name__)

_ROUTES = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/health",
    "/metrics",
    "/version",
)


@dataclass(slots=True)
class DoorState:
    """What the gate keeps across requests."""

    max_in_flight: int
    draining: bool = False
    in_flight: int = 0


class Gate:
    """Keys, body limit, draining and capacity, in front of every route; metrics of every answer."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyRing,
        state: DoorState,
        metrics: ApiMetrics,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.keys = keys
        self.state = state
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        route = (
            path
            if path in _ROUTES
            else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
        )
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = False
        try:
            if path.startswith("/v1/"):
                headers = dict(scope["headers"])
                auth = headers.get(b"authorization")
                tenant = self.keys.tenant_for(auth.decode("latin-1") if auth else None)
                scope.setdefault("state", {})["key_tenant"] = tenant
                if scope["method"] == "POST":
                    self._admit(headers)
                    receive = await self._read_body(receive)
                    if b"content-type" not in headers:  # curl -d without -H: JSON all the same
                        scope["headers"] = [
                            *scope["headers"],
                            (b"content-type", b"application/json"),
                        ]
                    counted = True
                    self.state.in_flight += 1
                    self.metrics.in_flight.labels(self.metrics.model).inc()
            await self.app(scope, receive, send_status)
        except ApiError as err:
            await JSONResponse(err.body(), err.status)(scope, receive, send_status)
        except _Gone:
            status = 499
        finally:
            if counted:
                self.state.in_flight -= 1
                self.metrics.in_flight.labels(self.metrics.model).dec()
            self.metrics.observe(route, status, time.perf_counter() - t0)

    def _admit(self, headers: dict[bytes, bytes]) -> None:
        if self.state.draining:
            raise ApiError(
                503, "the server is draining", type="service_unavailable", code="draining"
            )
        if self.state.in_flight >= self.state.max_in_flight:
            raise ApiError(
                429,
                f"over capacity: {self.state.max_in_flight} requests in flight; retry later",
                type="rate_limit_error",
                code="over_capacity",
            )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)

    async def _read_body(self, receive: Receive) -> Receive:
        """Reads the whole body (413 past the limit, also when chunked) and returns a receive
        that hands it over in one message, then passes on what the client sends next (its
        disconnect)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Gone()
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            parts.append(body)
            if not message.get("more_body", False):
                break
        replay: Message | None = {
            "type": "http.request",
            "body": b"".join(parts),
            "more_body": False,
        }

        async def replayed() -> Message:
            nonlocal replay
            if replay is not None:
                message, replay = replay, None
                return message
            return await receive()

        return replayed


class _Gone(Exception):
    """The client left while its body was being read."""


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")


def create_app(
    door: Door, keys: KeyRing, metrics: ApiMetrics, *, max_body_bytes: int, max_in_flight: int
) -> tuple[ASGIApp, DoorState]:
    """The ASGI application and the state the server drains through."""
    state = DoorState(max_in_flight=max_in_flight)
    app = FastAPI(
        title="FastSwitch (OpenAI-compatible)",
        version=package_version(),
        description="OpenAI's completions and chat completions API over a FastSwitch scheduler.",
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_error(err).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(
            ApiError(err.status_code, str(err.detail), type=kind).body(), err.status_code
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        msg = f"internal error ({type(err).__name__})"
        return JSONResponse(ApiError(500, msg, type="server_error", code="internal").body(), 500)

    def model_card() -> dict[str, Any]:
        return {
            "id": door.model_name,
            "object": "model",
            "created": door.config.created,
            "owned_by": "fastswitch",
            "max_model_len": door.max_model_len,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        cards = [{**model_card(), "id": name} for name in door.config.model_names]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        door.check_model(model_id)
        return {**model_card(), "id": model_id}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prepared = door.completion(body, request.scope["state"].get("key_tenant"))
        return await _answer(request, prepared, _shape(prepared, body, chat=False), body.stream)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        prepared = door.chat(body, request.scope["state"].get("key_tenant"))
        return await _answer(request, prepared, _shape(prepared, body, chat=True), body.stream)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, 503)
        try:
            stats = await door.client.stats(timeout_s=2.0)
        except FastSwitchError as err:
            return JSONResponse({"status": "unavailable", "error": err.details}, 503)
        workers = len(stats.workers)
        return JSONResponse(
            {"status": "ok" if workers else "no_workers", "workers": workers},
            200 if workers else 503,
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": package_version()}

    async def _answer(request: Request, p: Prepared, shape: Shape, stream: bool) -> Response:
        gen = door.open(p)
        usage = Usage(prompt_tokens=len(p.prompt_ids))

        def gone() -> None:
            metrics.disconnects.labels(metrics.model).inc()
            gen.cancel()

        try:
            if not stream:
                text, ids, finish = await unless_disconnected(request, _collect(gen, usage), gone)
                body = shape.whole(text, finish, usage, ids, p.prompt_ids)
                return JSONResponse(body, headers=_rid(p))
            first = await unless_disconnected(request, gen.__anext__(), gone)
        except ClientGone:
            return Response(status_code=499)
        except FastSwitchError as err:
            raise from_sdk(err) from None
        except StopAsyncIteration:
            raise ApiError(500, "the scheduler ended the stream without an answer") from None
        events = _events(gen, first, usage, shape)
        return EventStream(events, on_disconnect=gone, headers=_rid(p))

    app_with_gate = Gate(
        app, keys=keys, state=state, metrics=metrics, max_body_bytes=max_body_bytes
    )
    return app_with_gate, state


def _shape(p: Prepared, body: CompletionRequest | ChatCompletionRequest, *, chat: bool) -> Shape:
    return Shape(
        id=f"{'chatcmpl' if chat else 'cmpl'}-{p.request_id}",
        created=int(time.time()),
        model=body.model,
        chat=chat,
        token_ids=body.return_token_ids,
        include_usage=body.include_usage,
        continuous_usage=body.continuous_usage,
    )


def _rid(p: Prepared) -> dict[str, str]:
    return {"x-request-id": p.request_id}


def _ended_badly(chunk: GenerationChunk) -> ApiError | None:
    if chunk.finish_reason in (FinishReason.CANCELLED, FinishReason.ABORTED):
        return ApiError(
            503 if chunk.finish_reason == FinishReason.CANCELLED else 500,
            f"the request was {chunk.finish_reason.value} by the server",
            type="server_error",
            code=chunk.finish_reason.value,
        )
    return None


async def _collect(gen: GenerationStream, usage: Usage) -> tuple[str, list[int], str | None]:
    texts: list[str] = []
    ids: list[int] = []
    async with gen:
        async for chunk in gen:
            usage.add(chunk.token_ids)
            ids.extend(chunk.token_ids)
            texts.append(chunk.text)
            if chunk.finish_reason is not None:
                bad = _ended_badly(chunk)
                if bad is not None:
                    raise bad
                usage.finish(chunk.metrics)
                return "".join(texts), ids, finish_reason(chunk.finish_reason)
    raise ApiError(500, "the scheduler ended the stream without a final chunk")


async def _events(
    gen: GenerationStream, first: GenerationChunk, usage: Usage, shape: Shape
) -> AsyncIterator[bytes]:
    """The SSE events of one answer: (chat: a role chunk), a chunk per scheduler chunk that adds
    text (or token ids, when they are asked for), the finish chunk, (a usage chunk), ``[DONE]``.
    Events due together go out as one write (the role chunk with the first text; what the last
    scheduler chunk brings, ending with ``[DONE]``). A failure after the first byte is an
    ``error`` event."""
    async with gen:
        # a chat stream begins with the role's own chunk; it goes out with the first text
        tail = [shape.chunk("", role=True, usage=usage)] if shape.chat else []
        chunk: GenerationChunk | None = first
        try:
            while chunk is not None:
                usage.add(chunk.token_ids)
                done = chunk.finish_reason is not None
                bad = _ended_badly(chunk) if done else None
                if bad is not None:
                    tail.append(event(bad.body()))
                    break
                if done:
                    usage.finish(chunk.metrics)
                if chunk.text or (shape.token_ids and chunk.token_ids):
                    tail.append(shape.chunk(chunk.text, usage=usage, ids=chunk.token_ids))
                    if not done:
                        yield b"".join(tail)
                        tail = []
                if done:
                    tail.append(shape.chunk(None, finish_reason(chunk.finish_reason), usage=usage))
                    if shape.include_usage:
                        tail.append(event(shape.usage_chunk(usage)))
                    break
                chunk = await anext(gen, None)
        except FastSwitchError as err:
            tail.append(event(from_sdk(err).body()))
    tail.append(DONE)
    yield b"".join(tail)


def _validation_error(err: RequestValidationError) -> ApiError:
    """400 naming the first offending field, as ``messages.0.role: Input should be ...``."""
    errors = err.errors()
    if not errors:
        return ApiError(400, "invalid request body")
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(
            400, f"the body is not valid JSON: {first.get('msg', '')}", code="json_invalid"
        )
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {where!r}", param=where, code="unknown_field")
    if kind == "missing":
        return ApiError(400, f"{where}: this field is required", param=where or None)
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, f"{where}: {msg}{more}" if where else f"{msg}{more}", param=where or None)
