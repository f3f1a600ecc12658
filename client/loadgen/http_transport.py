"""The load generator through the OpenAI-compatible HTTP door (``--target http://HOST:PORT``).

One shared :class:`~client.loadgen.http_client.HttpClient` (HTTP/1.1 keep-alive, a pool of
``max_connections``: the run's concurrency, no cap without one; a lean client, so the bench's own
CPU per request stays small next to the door's). A completion is ``POST /v1/completions`` with
the prompt as token ids, ``stream: true``, ``stream_options.include_usage`` and the door's
``return_token_ids`` extension, so every chunk says exactly which tokens it adds (the runner
counts and times tokens, and keeps the reply's ids for the next turn's history). The final usage
chunk gives the server's ``prompt_tokens`` and ``cached_tokens``; the scheduler's own timings
are not in OpenAI's answer and stay unknown. A non-200 answer, an ``error`` event, a stream
that ends without ``data: [DONE]`` or a broken connection fail the request
(:class:`RequestFailed`, the door's message). The whole stream is bounded by ``timeout_s``.

The door has no stats, conversations or priority changes. With ``stats_target`` (the
scheduler's gRPC address) stats come from its GetStats, and a running request's priority is
changed there under the scheduler's id of it (the door's ``x-request-id`` header).
Preflight: ``GET /health`` must be 200; the model is the first of ``GET /v1/models`` unless
``model_name`` is given.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Self

from client import AsyncClient, FastSwitchError, SamplingOptions, Stats
from client.loadgen.http_client import HttpClient, HttpError
from client.loadgen.sse import SseParser, decode_event, error_message
from client.loadgen.transport import (
    Conversation,
    Piece,
    RequestFailed,
    TargetError,
    failed,
)
from client.tls import ssl_context

NO_STATS = (
    "the server's stats were not collected: the HTTP door has none "
    "(give --stats-target HOST:PORT, the scheduler's gRPC address)"
)


class HttpTransport:
    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        stats_target: str | None = None,
        model_name: str | None = None,
        max_connections: int | None = None,
        connect_timeout_s: float = 5.0,
        api_key: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        """``api_key`` (None: ``$FASTSWITCH_API_KEY``) is the door's key, sent as
        ``Authorization: Bearer``, and the stats target's. ``tls_ca`` verifies an ``https://``
        door and makes the stats target TLS."""
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.target = url.rstrip("/")
        self.can_set_priority = stats_target is not None
        self.stats_note = None if stats_target is not None else NO_STATS
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._model = model_name
        key = os.environ.get("FASTSWITCH_API_KEY", "") if api_key is None else api_key
        self._headers = {"authorization": f"Bearer {key}"} if key else {}
        self._stats_api = (
            None
            if stats_target is None
            else AsyncClient(stats_target, api_key=api_key, tls_ca=tls_ca)
        )
        self._tls = ssl_context(tls_ca) if tls_ca else None
        self._stats_target = stats_target
        self._http: HttpClient | None = None
        self._server_ids: dict[str, str] = {}  # our request id -> the scheduler's (x-request-id)

    async def __aenter__(self) -> Self:
        self._http = HttpClient(
            self.target,
            max_connections=self._max_connections,
            connect_timeout_s=self._connect_timeout_s,
            headers=self._headers,
            ssl=self._tls,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        if self._stats_api is not None:
            await self._stats_api.close()

    # ------------------------------------------------------------------ set-up

    async def check(self, *, timeout_s: float) -> None:
        try:
            status, raw = await self._get("/health", timeout_s)
        except (HttpError, TimeoutError) as err:
            raise TargetError(
                f"no FastSwitch HTTP door answers at {self.target} ({_why(err)})"
            ) from None
        if status != 200:
            raise TargetError(
                f"the HTTP door at {self.target} is not ready: GET /health answered "
                f"{status} {_text(raw)}"
            )
        await self._model_name(timeout_s)
        if self._stats_api is not None:
            try:
                await self._stats_api.stats(timeout_s=timeout_s)
            except FastSwitchError as err:
                raise TargetError(
                    f"no FastSwitch scheduler answers at --stats-target {self._stats_target} "
                    f"({err.code.name})"
                ) from None

    async def _model_name(self, timeout_s: float) -> str:
        if self._model is None:
            self._model = str((await self._first_model(timeout_s))["id"])
        return self._model

    async def _first_model(self, timeout_s: float) -> dict[str, Any]:
        try:
            status, raw = await self._get("/v1/models", timeout_s)
        except (HttpError, TimeoutError) as err:
            raise TargetError(f"GET {self.target}/v1/models failed ({_why(err)})") from None
        try:
            first = json.loads(raw)["data"][0] if status == 200 else None
        except (ValueError, KeyError, IndexError, TypeError):
            first = None
        if not isinstance(first, dict) or "id" not in first:
            raise TargetError(
                f"GET {self.target}/v1/models did not list a model: {status} {_text(raw)}"
            )
        return first

    async def max_model_len(self, *, timeout_s: float) -> int | None:
        try:
            n = (await self._first_model(timeout_s)).get("max_model_len")
        except TargetError:
            return None
        return n if isinstance(n, int) and n > 0 else None

    async def workers(self, *, timeout_s: float) -> int:
        """The ``workers`` of ``GET /health`` (its 503 still says how many: 0)."""
        try:
            status, raw = await self._get("/health", timeout_s)
        except (HttpError, TimeoutError) as err:
            raise RequestFailed("UNAVAILABLE", _why(err)) from None
        try:
            n = json.loads(raw).get("workers", 0)
        except (ValueError, AttributeError):
            raise RequestFailed(f"HTTP_{status}", _text(raw)) from None
        return int(n) if isinstance(n, int) else 0

    # ------------------------------------------------------------------ requests

    async def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        options: SamplingOptions,
        tenant: str,
        priority: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Piece, None]:
        model = self._model
        if model is None:
            try:
                model = await self._model_name(self._connect_timeout_s)
            except TargetError as err:
                raise RequestFailed("UNAVAILABLE", str(err)) from None
        body: dict[str, Any] = {
            "model": model,
            "prompt": list(prompt_ids),
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "ignore_eos": options.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            "user": tenant,
            "priority": priority,
        }
        if options.seed is not None:
            body["seed"] = options.seed
        try:
            async with asyncio.timeout(timeout_s):
                call = self._client().request("POST", "/v1/completions", json_body=body)
                async with call as resp:
                    if resp.status != 200:
                        raw = await resp.read()
                        raise RequestFailed(f"HTTP_{resp.status}", _message(raw))
                    if sid := resp.headers.get("x-request-id"):
                        self._server_ids[request_id] = sid
                    parser = SseParser()
                    async for data in resp.pieces():
                        for event in parser.feed(data):
                            got = decode_event(event)
                            if got is None:  # read to the body's end: the connection is reused
                                await resp.read()
                                return
                            yield got
                    raise RequestFailed("HTTP_INCOMPLETE", "the stream ended without data: [DONE]")
        except TimeoutError:
            raise RequestFailed(
                "DEADLINE_EXCEEDED", f"no whole answer within {timeout_s:g} s"
            ) from None
        except HttpError as err:
            raise RequestFailed("UNAVAILABLE", _why(err)) from None
        finally:
            self._server_ids.pop(request_id, None)

    def conversation(self, tenant: str) -> Conversation:
        raise RequestFailed(
            "UNIMPLEMENTED",
            "the HTTP door has no conversations: each turn sends its whole history",
        )

    # ------------------------------------------------------------------ the scheduler's

    async def stats(self, *, timeout_s: float) -> Stats:
        if self._stats_api is None:
            raise RequestFailed("UNIMPLEMENTED", NO_STATS)
        try:
            return await self._stats_api.stats(timeout_s=timeout_s)
        except FastSwitchError as err:
            raise failed(err) from err

    async def set_priority(self, request_id: str, level: int, *, timeout_s: float) -> None:
        if self._stats_api is None:
            raise RequestFailed("UNIMPLEMENTED", "priority changes need --stats-target")
        sid = self._server_ids.get(request_id)
        if sid is None:
            raise RequestFailed("NOT_FOUND", f"{request_id} is not running")
        try:
            await self._stats_api.set_priority(sid, level, timeout_s=timeout_s)
        except FastSwitchError as err:
            raise failed(err) from err

    async def _get(self, path: str, timeout_s: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout_s):
            return await self._client().get(path)

    def _client(self) -> HttpClient:
        if self._http is None:
            raise RuntimeError("the HTTP transport is not open (use it as `async with`)")
        return self._http


def _message(raw: bytes) -> str:
    """The door's error message of a non-200 body (OpenAI's JSON), else the body's start."""
    try:
        return error_message(json.loads(raw))
    except ValueError:
        return raw[:300].decode("utf-8", "replace")


def _text(raw: bytes) -> str:
    return raw[:200].decode("utf-8", "replace")


def _why(err: Exception) -> str:
    if isinstance(err, TimeoutError) and not str(err):
        return "no answer in time"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
