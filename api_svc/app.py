"""The HTTP application: OpenAI's routes over a :class:`~api_svc.door.Door`.

Every request first passes the :class:`Gate` (pure ASGI, so streaming and disconnects are
untouched): the API key, a body-size limit, draining (503) and the in-flight limit (429), and the
request metrics. The generation routes are then answered by :mod:`api_svc.generation` (plain
ASGI: they carry the load), the rest by FastAPI. Every error is OpenAI's JSON
(:mod:`api_svc.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_svc.auth import KeyRing
from api_svc.door import Door
from api_svc.errors import ApiError
from api_svc.generation import CHAT, COMPLETIONS, Generation, validation_error
from api_svc.generation import ROUTES as GENERATION_ROUTES
from api_svc.metrics import ApiMetrics
from api_svc.protocol import ChatCompletionRequest, CompletionRequest
from client.errors import FastSwitchError
from servekit.config import package_version

log = logging.getLogger(__name__)

_ROUTES = (
    *GENERATION_ROUTES,
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
        generation: Generation,
        *,
        keys: KeyRing,
        state: DoorState,
        metrics: ApiMetrics,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.generation = generation
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
                if scope["method"] == "POST" and path in GENERATION_ROUTES:
                    self._admit(headers)
                    body = await self._read_body(receive)
                    counted = True
                    self.state.in_flight += 1
                    self.metrics.in_flight_now.inc()
                    status = await self.generation(path, body, tenant, receive, send)
                    return
            await self.app(scope, receive, send_status)
        except ApiError as err:
            await JSONResponse(err.body(), err.status)(scope, receive, send_status)
        except _Gone:
            status = 499
        finally:
            if counted:
                self.state.in_flight -= 1
                self.metrics.in_flight_now.dec()
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

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body (413 past the limit, also when chunked); ``receive`` then only says
        when the client leaves."""
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
                return parts[0] if len(parts) == 1 else b"".join(parts)


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
        return JSONResponse(validation_error(err.errors()).body(), 400)

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

    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app_with_gate = Gate(
        app,
        Generation(door, metrics),
        keys=keys,
        state=state,
        metrics=metrics,
        max_body_bytes=max_body_bytes,
    )
    return app_with_gate, state


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema (``GET /openapi.json``, ``/docs``) with the generation routes added,
    which are not FastAPI routes (:mod:`api_svc.generation`): their bodies' JSON schemas."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for path, model in ((COMPLETIONS, CompletionRequest), (CHAT, ChatCompletionRequest)):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
                ref = {"$ref": f"#/components/schemas/{model.__name__}"}
                doc["paths"][path] = {
                    "post": {
                        "summary": model.__doc__,
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": ref}},
                        },
                        "responses": {"200": {"description": _ANSWER}},
                    }
                }
            app.openapi_schema = doc
        return app.openapi_schema

    return schema


_ANSWER = (
    "the answer as one JSON object, or with stream: true server-sent events of its chunks "
    "ending with data: [DONE]"
)
