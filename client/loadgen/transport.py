"""How the runner reaches a server: one small interface (:class:`Transport`), two doors.

* :class:`GrpcTransport` -- ``HOST:PORT`` or ``unix:///path``: the SDK's :class:`AsyncClient`
  (Generate, Chat, GetStats, SetPriority), the path the load generator has always taken.
* :class:`~client.loadgen.http_transport.HttpTransport` -- ``http://HOST:PORT``: the
  OpenAI-compatible door (``POST /v1/completions`` streamed as server-sent events).

The runner sees only this module's types: a completion is an async iterator of :class:`Piece`
(the token ids a chunk adds, and on the last ones what the server counted), a failed request is
:class:`RequestFailed` (``code``: a gRPC status name, or ``HTTP_<status>`` and the like for the
door; ``details``: the server's message), a target that cannot be benchmarked at all is
:class:`TargetError`. Both transports time nothing: the runner stamps every piece itself, so the
two doors are measured by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from client import AsyncChat, AsyncClient, FastSwitchError, SamplingOptions, Stats
from client.loadgen.stats import ServerUsage
from client.results import RequestMetrics
from client.stream import GenerationStream

HTTP_SCHEMES = ("http://", "https://")


class TargetError(RuntimeError):
    """The target cannot be benchmarked: unreachable, no worker, or the warm-up failed."""


class RequestFailed(Exception):
    """One request (or call) failed: ``code`` names the kind, ``details`` is the server's (or
    the connection's) message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class Piece:
    """What one streamed chunk adds: its token ids (may be none), and on the last chunks the
    scheduler's metrics (gRPC only) and the server's token counts (both doors)."""

    token_ids: tuple[int, ...]
    metrics: RequestMetrics | None = None
    usage: ServerUsage | None = None


def is_http(target: str) -> bool:
    """Whether ``target`` names the HTTP door (``http://`` / ``https://``) rather than gRPC."""
    return target.startswith(HTTP_SCHEMES)


class Conversation(Protocol):
    """A multi-turn conversation kept by the server (gRPC's Chat)."""

    def send(
        self,
        message: str,
        *,
        options: SamplingOptions,
        priority: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Piece, None]: ...

    async def end(self, *, timeout_s: float) -> None: ...


class Transport(Protocol):
    """What the runner needs of a server. Use it as ``async with``; streams are async
    generators: closing one early (``aclose``, or cancelling the task) cancels the request."""

    target: str
    kind: str  # "grpc" | "http"
    can_set_priority: bool  # running requests can be moved to another level
    stats_note: str | None  # why the server's stats are not collected (None: they are)

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def check(self, *, timeout_s: float) -> None:
        """TargetError (one line) unless the server answers and has a worker."""
        ...

    def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        options: SamplingOptions,
        tenant: str,
        priority: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Piece, None]:
        """One completion of ``prompt_ids``; RequestFailed when it fails."""
        ...

    def conversation(self, tenant: str) -> Conversation: ...

    async def stats(self, *, timeout_s: float) -> Stats:
        """The scheduler's stats; RequestFailed when they cannot be had."""
        ...

    async def set_priority(self, request_id: str, level: int, *, timeout_s: float) -> None: ...

    async def max_model_len(self, *, timeout_s: float) -> int | None:
        """The model's context as the server reports it (None: it does not say)."""
        ...

    async def workers(self, *, timeout_s: float) -> int:
        """How many workers serve now; RequestFailed when the server does not answer."""
        ...


def open_transport(
    target: str,
    *,
    timeout_s: float,
    stats_target: str | None = None,
    model_name: str | None = None,
    max_connections: int | None = None,
    connect_timeout_s: float = 5.0,
    api_key: str | None = None,
    tls_ca: str | None = None,
    multiplex: bool = True,
) -> Transport:
    """The transport of ``target``: HTTP for ``http(s)://``, else gRPC. ``stats_target`` (a
    scheduler's gRPC address), ``model_name`` and ``max_connections`` (the keep-alive pool;
    None: no cap) concern HTTP only. ``api_key`` goes with every call (gRPC metadata, or the
    door's ``Authorization: Bearer`` header; None: ``$FASTSWITCH_API_KEY``). ``tls_ca`` (a CA
    file) makes a gRPC target (and an HTTP target's stats target) TLS, and verifies an
    ``https://`` target (None: the system roots). ``multiplex`` sends a gRPC target's
    completions on one GenerateMany call (False: a Generate call each)."""
    if is_http(target):
        from client.loadgen.http_transport import HttpTransport

        return HttpTransport(
            target,
            stats_target=stats_target,
            model_name=model_name,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
            api_key=api_key,
            tls_ca=tls_ca,
        )
    if stats_target is not None or model_name is not None:
        raise ValueError(
            f"--stats-target and --model-name are for an http:// target; got target {target!r}"
        )
    return GrpcTransport(
        target, timeout_s=timeout_s, api_key=api_key, tls_ca=tls_ca, multiplex=multiplex
    )


def failed(err: FastSwitchError) -> RequestFailed:
    return RequestFailed(err.code.name, err.details)


def piece(token_ids: Sequence[int], metrics: RequestMetrics | None) -> Piece:
    usage = None
    if metrics is not None:
        usage = ServerUsage(metrics.prompt_tokens, metrics.cached_prompt_tokens)
    return Piece(tuple(token_ids), metrics, usage)


async def pieces(stream: GenerationStream) -> AsyncGenerator[Piece, None]:
    """The SDK's stream as pieces; its failures as RequestFailed."""
    try:
        async with stream:
            async for chunk in stream:
                yield piece(chunk.token_ids, chunk.metrics)
    except FastSwitchError as err:
        raise failed(err) from err


class GrpcTransport:
    """The scheduler's gRPC API through the SDK; with ``multiplex`` every completion goes on
    the client's one GenerateMany call (a Chat turn has a call of its own)."""

    kind = "grpc"
    can_set_priority = True
    stats_note: str | None = None

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float,
        api_key: str | None = None,
        tls_ca: str | None = None,
        multiplex: bool = True,
    ) -> None:
        self.target = target
        self._api = AsyncClient(
            target, timeout_s=timeout_s, api_key=api_key, tls_ca=tls_ca, multiplex=multiplex
        )

    async def __aenter__(self) -> Self:
        await self._api.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._api.close()

    async def check(self, *, timeout_s: float) -> None:
        try:
            stats = await self._api.stats(timeout_s=timeout_s)
        except FastSwitchError:
            raise TargetError(f"no FastSwitch scheduler answers at {self.target}") from None
        if not stats.workers:
            raise TargetError(f"the scheduler at {self.target} has no worker yet")

    def stream(
        self,
        prompt_ids: Sequence[int],
        *,
        options: SamplingOptions,
        tenant: str,
        priority: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Piece, None]:
        return pieces(
            self._api.generate_stream(
                prompt_token_ids=prompt_ids,
                options=options,
                tenant=tenant,
                priority=priority,
                request_id=request_id,
                timeout_s=timeout_s,
            )
        )

    def conversation(self, tenant: str) -> Conversation:
        return GrpcConversation(self._api.chat(tenant=tenant))

    async def stats(self, *, timeout_s: float) -> Stats:
        try:
            return await self._api.stats(timeout_s=timeout_s)
        except FastSwitchError as err:
            raise failed(err) from err

    async def set_priority(self, request_id: str, level: int, *, timeout_s: float) -> None:
        try:
            await self._api.set_priority(request_id, level, timeout_s=timeout_s)
        except FastSwitchError as err:
            raise failed(err) from err

    async def max_model_len(self, *, timeout_s: float) -> int | None:
        try:
            return (await self._api.stats(timeout_s=timeout_s)).max_model_len
        except FastSwitchError:
            return None

    async def workers(self, *, timeout_s: float) -> int:
        return len((await self.stats(timeout_s=timeout_s)).workers)


class GrpcConversation:
    """A Chat conversation: the server keeps the history, each turn sends only its message."""

    def __init__(self, chat: AsyncChat) -> None:
        self._chat = chat

    def send(
        self,
        message: str,
        *,
        options: SamplingOptions,
        priority: int,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Piece, None]:
        return pieces(
            self._chat.send_stream(
                message,
                options=options,
                priority=priority,
                request_id=request_id,
                timeout_s=timeout_s,
            )
        )

    async def end(self, *, timeout_s: float) -> None:
        with contextlib.suppress(FastSwitchError):
            await self._chat.end(timeout_s=timeout_s)
