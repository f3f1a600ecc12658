"""The asyncio client of FastSwitch's public API (``proto/scheduler.proto``)."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, Unpack

import grpc

from client.errors import Cancelled, from_rpc_error
from client.mux import Multiplexer, MuxStream
from client.options import GenerateArgs, SamplingArgs, SamplingOptions, TurnArgs, resolve
from client.results import GenerationChunk, GenerationResult, Stats
from client.stream import GenerationStream, collect, task_is_cancelling
from client.tls import TLS_CA_ENV, channel_credentials, read_ca
from proto import scheduler_pb2 as pb
from proto import scheduler_pb2_grpc as pb_grpc

T = TypeVar("T")

#: Where a client finds its API key when none is given.
API_KEY_ENV = "FASTSWITCH_API_KEY"

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


class AsyncClient:
    """Async client of a FastSwitch scheduler at ``address`` (``host:port`` or ``unix:///path``).

    Use it as ``async with AsyncClient(addr) as c:`` (or call :meth:`close`). Every call carries a
    deadline: ``timeout_s`` per call, defaulting to the client's; for a stream it bounds the whole
    stream. Failed calls raise the typed exceptions of :mod:`client.errors`.
    The channel is opened on the first call, on the event loop that makes it.

    ``api_key`` is sent on every call as ``authorization: Bearer KEY`` (a server with keys
    answers UNAUTHENTICATED without one); None reads ``$FASTSWITCH_API_KEY``, "" sends none.

    ``tls=True`` dials TLS (a scheduler started with ``--tls-cert/--tls-key``), trusting the CA
    file ``tls_ca`` (for a self-signed certificate: the certificate itself); None reads
    ``$FASTSWITCH_TLS_CA``, and without either the system roots are trusted. Giving ``tls_ca``
    implies ``tls``. The certificate must name the host of ``address``.

    ``multiplex=True`` sends every :meth:`generate_stream` of this client on one shared
    ``GenerateMany`` call (:mod:`client.mux`): the same chunks and errors, one message per
    scheduler step for all of them; for a client with many streams open at once (the HTTP door).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 60.0,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
        multiplex: bool = False,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if api_key is None:
            api_key = os.environ.get(API_KEY_ENV, "")
        if api_key != api_key.strip() or any(c in api_key for c in "\r\n"):
            raise ValueError("api_key must not contain white space at its ends or line breaks")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        if tls_ca is not None:
            tls = True
        elif tls:
            tls_ca = os.environ.get(TLS_CA_ENV) or None
        if tls:
            read_ca(tls_ca)  # an unreadable CA fails here (ValueError), not on the first call
        self._tls = tls
        self._tls_ca = tls_ca
        self._address = address
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.FastSwitchStub | None = None
        self._mux: Multiplexer | None = None
        self._multiplex = multiplex
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    async def __aenter__(self) -> AsyncClient:
        self._api()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls still in flight are cancelled. Idempotent."""
        self._closed = True
        mux, self._mux = self._mux, None
        if mux is not None:
            await mux.aclose()
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    # ------------------------------------------------------------------ completions

    async def generate(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        **kw: Unpack[GenerateArgs],
    ) -> GenerationResult:
        """Generates one completion and returns it whole; the arguments are
        :meth:`generate_stream`'s. Cancelling the awaiting task cancels the request on the
        server."""
        stream = self.generate_stream(prompt, prompt_token_ids, **kw)
        return await collect(stream, request_id=kw.get("request_id") or "")

    def generate_stream(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        *,
        options: SamplingOptions | None = None,
        tenant: str = "",
        priority: int = 0,
        request_id: str | None = None,
        timeout_s: float | None = None,
        retain_ttl_s: float | None = None,
        **sampling: Unpack[SamplingArgs],
    ) -> GenerationStream:
        """One completion, streamed: ``async for chunk in c.generate_stream(...)``.

        Exactly one of ``prompt`` (text) and ``prompt_token_ids`` is given. Sampling is
        ``options`` updated by the :class:`~client.SamplingOptions` fields given as keywords
        (``max_tokens=16``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` strings,
        ``stop_token_ids``, ``ignore_eos``). ``retain_ttl_s`` keeps the request's KV on the
        server's host for that many seconds after it finishes (0: until evicted), so a later
        prompt that starts the same way skips those tokens; None: the server's default.
        ``tenant`` "" is the API key's tenant (``default`` on a server without keys); a tenant
        key may name its own tenant or a narrowing of it (``alice.sub``). The
        arguments are checked now (ValueError, before any RPC); the RPC starts on the first
        iteration. Breaking out of the loop cancels it.
        """
        if (prompt is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompt and prompt_token_ids")
        request = pb.GenerateRequest(
            request_id=request_id or "",
            sampling=resolve(options, sampling).to_proto(),
            tenant=tenant,
            priority=priority,
        )
        if retain_ttl_s is not None:
            request.retain_ttl_s = _retain_ttl_s(retain_ttl_s)
        if prompt is not None:
            request.text = prompt
        else:
            request.token_ids.ids.extend(_token_ids(prompt_token_ids))
        deadline = self._deadline(timeout_s)
        if self._multiplex:
            return MuxStream(self._multiplexer(), request, deadline)
        return GenerationStream(
            lambda: self._api().Generate(request, timeout=deadline, metadata=self._metadata)
        )

    # ------------------------------------------------------------------ conversations

    def chat(
        self, *, tenant: str = "", system: str | None = None, ttl_s: float | None = None
    ) -> AsyncChat:
        """A new conversation (created on the server with its first turn)."""
        return AsyncChat(self, tenant=tenant, system=system, ttl_s=ttl_s)

    async def end_conversation(
        self, conversation_id: str, *, tenant: str = "", timeout_s: float | None = None
    ) -> int:
        """Ends a conversation and releases its retained KV; returns the blocks freed."""
        request = pb.EndConversationRequest(conversation_id=conversation_id, tenant=tenant)
        resp = await self._unary(self._api().EndConversation, request, timeout_s)
        return int(resp.freed_blocks)

    # ------------------------------------------------------------------ control

    async def cancel(
        self, request_id: str, *, tenant: str = "", timeout_s: float | None = None
    ) -> bool:
        """Cancels a request; False when it had already finished. ``tenant`` names whose
        request it is ("": the key's tenant, or any tenant on a server without keys); another
        tenant's request is :class:`~client.errors.NotFound`, as an unknown id is."""
        request = pb.CancelRequest(request_id=request_id, tenant=tenant)
        resp = await self._unary(self._api().Cancel, request, timeout_s)
        return bool(resp.cancelled)

    async def set_priority(
        self,
        request_id: str,
        priority: int,
        *,
        tenant: str = "",
        timeout_s: float | None = None,
    ) -> None:
        """Changes a queued or running request's priority (higher runs first; capped at the
        tenant's priority class on a server with keys); ``tenant`` as in :meth:`cancel`."""
        request = pb.SetPriorityRequest(request_id=request_id, priority=priority, tenant=tenant)
        await self._unary(self._api().SetPriority, request, timeout_s)

    async def stats(self, *, timeout_s: float | None = None) -> Stats:
        """A snapshot of the scheduler: totals, per tenant and per worker."""
        resp = await self._unary(self._api().GetStats, pb.StatsRequest(), timeout_s)
        return Stats.from_proto(resp)

    # ------------------------------------------------------------------ plumbing

    def _api(self) -> pb_grpc.FastSwitchStub:
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._stub is None:
            if self._tls:
                creds = channel_credentials(self._tls_ca)
                self._channel = grpc.aio.secure_channel(
                    self._address, creds, options=_CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(self._address, options=_CHANNEL_OPTIONS)
            self._stub = pb_grpc.FastSwitchStub(self._channel)
        return self._stub

    def _multiplexer(self) -> Multiplexer:
        if self._mux is None:
            api = self._api()
            self._mux = Multiplexer(lambda: api.GenerateMany(metadata=self._metadata))
        return self._mux

    def _deadline(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self._timeout_s
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        return timeout_s

    async def _unary(
        self, method: Callable[..., Awaitable[T]], request: Any, timeout_s: float | None
    ) -> T:
        try:
            return await method(request, timeout=self._deadline(timeout_s), metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            if task_is_cancelling():
                raise
            raise Cancelled(grpc.StatusCode.CANCELLED, "the call was cancelled") from None


FastSwitchClient = AsyncClient


class AsyncChat:
    """A multi-turn conversation. The server keeps the exact history, so later turns reuse the
    retained KV of earlier ones.

    ``conversation_id`` is None until the server names the conversation on the first turn. One
    turn at a time (RuntimeError otherwise). ``async with c.chat() as chat:`` ends it on exit.
    """

    def __init__(
        self, client: AsyncClient, *, tenant: str, system: str | None, ttl_s: float | None
    ) -> None:
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self._client = client
        self.tenant = tenant
        self.system = system
        self.ttl_s = ttl_s
        self._conversation_id: str | None = None
        self._turn_open = False
        self._ended = False

    @property
    def conversation_id(self) -> str | None:
        return self._conversation_id

    async def __aenter__(self) -> AsyncChat:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.end()

    async def send(self, message: str, **kw: Unpack[TurnArgs]) -> GenerationResult:
        """One turn: sends ``message`` and returns the whole reply; the arguments are
        :meth:`send_stream`'s."""
        stream = self.send_stream(message, **kw)
        return await collect(stream, request_id=kw.get("request_id") or "")

    def send_stream(
        self,
        message: str,
        *,
        options: SamplingOptions | None = None,
        priority: int = 0,
        request_id: str | None = None,
        timeout_s: float | None = None,
        **sampling: Unpack[SamplingArgs],
    ) -> GenerationStream:
        """One turn, streamed; sampling as in :meth:`AsyncClient.generate_stream`. The turn
        stays open until the stream ends or is closed."""
        if self._ended:
            raise RuntimeError("the conversation has ended")
        if self._turn_open:
            raise RuntimeError("a turn of this conversation is still in progress")
        request = pb.ChatRequest(
            conversation_id=self._conversation_id or "",
            tenant=self.tenant,
            system=(self.system or "") if self._conversation_id is None else "",
            message=message,
            sampling=resolve(options, sampling).to_proto(),
            priority=priority,
            request_id=request_id or "",
            ttl_s=self.ttl_s or 0.0,
        )
        client = self._client
        deadline = client._deadline(timeout_s)
        self._turn_open = True
        return GenerationStream(
            lambda: client._api().Chat(request, timeout=deadline, metadata=client._metadata),
            on_chunk=self._on_chunk,
            on_close=self._on_turn_closed,
        )

    async def end(self, *, timeout_s: float | None = None) -> int:
        """Ends the conversation on the server (releasing its retained KV); returns the blocks
        freed. Idempotent; a conversation that never started costs no RPC."""
        if self._ended:
            return 0
        self._ended = True
        if self._conversation_id is None:
            return 0
        return await self._client.end_conversation(
            self._conversation_id, tenant=self.tenant, timeout_s=timeout_s
        )

    def _on_chunk(self, chunk: GenerationChunk) -> None:
        if chunk.conversation_id and self._conversation_id is None:
            self._conversation_id = chunk.conversation_id

    def _on_turn_closed(self) -> None:
        self._turn_open = False


def _retain_ttl_s(ttl: float) -> float:
    ok = isinstance(ttl, int | float) and not isinstance(ttl, bool)
    if not (ok and math.isfinite(ttl) and ttl >= 0):
        raise ValueError(
            f"retain_ttl_s must be a finite number >= 0 (0: until evicted), got {ttl!r}"
        )
    return float(ttl)


def _token_ids(ids: Sequence[int] | None) -> list[int]:
    out = list(ids or ())
    if not out:
        raise ValueError("prompt_token_ids is empty")
    bad = [t for t in out if isinstance(t, bool) or not isinstance(t, int)]
    if bad:
        raise ValueError(f"prompt_token_ids must be ints, got {bad[0]!r}")
    return out
