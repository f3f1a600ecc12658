"""The asyncio client of FastSwitch's public API (``proto/scheduler.proto``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from client.errors import Cancelled, from_rpc_error
from client.results import GenerationChunk, GenerationResult, Stats
from client.stream import GenerationStream, collect, task_is_cancelling
from proto import scheduler_pb2 as pb
from proto import scheduler_pb2_grpc as pb_grpc

T = TypeVar("T")

_UINT64_MAX = (1 << 64) - 1
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
)


def sampling_params(
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: Sequence[int] | None,
    ignore_eos: bool,
) -> pb.SamplingParams:
    """Builds ``SamplingParams``; ValueError for what the client can tell is wrong before any RPC.

    Ranges of temperature / top_p / top_k are the server's to judge (INVALID_ARGUMENT).
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if seed is not None and not 0 <= seed <= _UINT64_MAX:
        raise ValueError(f"seed must be in [0, 2**64), got {seed!r}")
    stop_ids = list(stop or ())
    bad = [t for t in stop_ids if isinstance(t, bool) or not isinstance(t, int)]
    if bad:
        raise ValueError(f"stop must be a list of token ids (ints), got {bad[0]!r}")
    params = pb.SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_tokens=max_tokens,
        stop_token_ids=stop_ids,
        ignore_eos=ignore_eos,
    )
    if seed is not None:
        params.seed = seed
    return params


class AsyncClient:
    """Async client of a FastSwitch scheduler at ``address`` (``host:port`` or ``unix:///path``).

    Use it as ``async with AsyncClient(addr) as c:`` (or call :meth:`close`). Every call carries a
    deadline: ``timeout_s`` per call, defaulting to the client's; for a stream it bounds the whole
    stream. Failed calls raise the typed exceptions of :mod:`client.errors`.
    The channel is opened on the first call, on the event loop that makes it.
    """

    def __init__(self, address: str, *, timeout_s: float = 60.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._address = address
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.FastSwitchStub | None = None
        self._closed = False

    @property
    def address(self) -> str:
        return self._address

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
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    # ------------------------------------------------------------------ completions

    async def generate(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[int] | None = None,
        tenant: str = "default",
        priority: int = 0,
        ignore_eos: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """Generates one completion and returns it whole.

        Exactly one of ``prompt`` (text) and ``prompt_token_ids`` is given (ValueError otherwise,
        before any RPC). ``stop`` lists stop token ids. Cancelling the awaiting task cancels the
        request on the server.
        """
        stream = self.generate_stream(
            prompt,
            prompt_token_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            tenant=tenant,
            priority=priority,
            ignore_eos=ignore_eos,
            request_id=request_id,
            timeout_s=timeout_s,
        )
        return await collect(stream, request_id=request_id or "")

    def generate_stream(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[int] | None = None,
        tenant: str = "default",
        priority: int = 0,
        ignore_eos: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationStream:
        """Like :meth:`generate`, streamed: ``async for chunk in c.generate_stream(...)``.

        The arguments are checked now; the RPC starts on the first iteration. Breaking out of the
        loop cancels it.
        """
        if (prompt is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompt and prompt_token_ids")
        request = pb.GenerateRequest(
            request_id=request_id or "",
            sampling=sampling_params(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                ignore_eos=ignore_eos,
            ),
            tenant=tenant,
            priority=priority,
        )
        if prompt is not None:
            request.text = prompt
        else:
            request.token_ids.ids.extend(_token_ids(prompt_token_ids))
        deadline = self._deadline(timeout_s)
        return GenerationStream(lambda: self._api().Generate(request, timeout=deadline))

    # ------------------------------------------------------------------ conversations

    def chat(
        self, *, tenant: str = "default", system: str | None = None, ttl_s: float | None = None
    ) -> AsyncChat:
        """A new conversation (created on the server with its first turn)."""
        return AsyncChat(self, tenant=tenant, system=system, ttl_s=ttl_s)

    async def end_conversation(
        self, conversation_id: str, *, tenant: str = "default", timeout_s: float | None = None
    ) -> int:
        """Ends a conversation and releases its retained KV; returns the blocks freed."""
        request = pb.EndConversationRequest(conversation_id=conversation_id, tenant=tenant)
        resp = await self._unary(self._api().EndConversation, request, timeout_s)
        return int(resp.freed_blocks)

    # ------------------------------------------------------------------ control

    async def cancel(self, request_id: str, *, timeout_s: float | None = None) -> bool:
        """Cancels a request; False when it had already finished."""
        resp = await self._unary(
            self._api().Cancel, pb.CancelRequest(request_id=request_id), timeout_s
        )
        return bool(resp.cancelled)

    async def set_priority(
        self, request_id: str, priority: int, *, timeout_s: float | None = None
    ) -> None:
        """Changes a queued or running request's priority (higher runs first)."""
        request = pb.SetPriorityRequest(request_id=request_id, priority=priority)
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
            self._channel = grpc.aio.insecure_channel(self._address, options=_CHANNEL_OPTIONS)
            self._stub = pb_grpc.FastSwitchStub(self._channel)
        return self._stub

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
            return await method(request, timeout=self._deadline(timeout_s))
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

    async def send(
        self,
        message: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[int] | None = None,
        priority: int = 0,
        ignore_eos: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationResult:
        """One turn: sends ``message`` and returns the whole reply."""
        stream = self.send_stream(
            message,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            priority=priority,
            ignore_eos=ignore_eos,
            request_id=request_id,
            timeout_s=timeout_s,
        )
        return await collect(stream, request_id=request_id or "")

    def send_stream(
        self,
        message: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: Sequence[int] | None = None,
        priority: int = 0,
        ignore_eos: bool = False,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationStream:
        """One turn, streamed. The turn stays open until the stream ends or is closed."""
        if self._ended:
            raise RuntimeError("the conversation has ended")
        if self._turn_open:
            raise RuntimeError("a turn of this conversation is still in progress")
        request = pb.ChatRequest(
            conversation_id=self._conversation_id or "",
            tenant=self.tenant,
            system=(self.system or "") if self._conversation_id is None else "",
            message=message,
            sampling=sampling_params(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                seed=seed,
                stop=stop,
                ignore_eos=ignore_eos,
            ),
            priority=priority,
            request_id=request_id or "",
            ttl_s=self.ttl_s or 0.0,
        )
        client = self._client
        deadline = client._deadline(timeout_s)
        self._turn_open = True
        return GenerationStream(
            lambda: client._api().Chat(request, timeout=deadline),
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


def _token_ids(ids: Sequence[int] | None) -> list[int]:
    out = list(ids or ())
    if not out:
        raise ValueError("prompt_token_ids is empty")
    bad = [t for t in out if isinstance(t, bool) or not isinstance(t, int)]
    if bad:
        raise ValueError(f"prompt_token_ids must be ints, got {bad[0]!r}")
    return out
