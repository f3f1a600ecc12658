"""The scheduler's asyncio layer over the core: request streams in, step sessions out. No gRPC.

* ``open`` validates and tokenizes at the edge, queues the request and returns its event stream;
  ``close`` ends a stream (cancelling the request if the client left before it finished).
* ``worker_session`` drives one worker: plan → send → receive → update, until the worker leaves;
  then its requests are queued again and recomputed elsewhere (KV is a cache, no request is
  lost). With asynchronous scheduling the next plan is made and sent while the worker runs the
  current one, so the worker starts it the moment its step ends.

All state changes happen on the event loop thread, so the core needs no locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from scheduler_svc.conversations import Conversation, Conversations
from scheduler_svc.core import SchedulerCore
from scheduler_svc.deltas import Delta, TextDelta
from scheduler_svc.errors import InvalidArgument, NotFound, Unavailable, invalid_argument
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.request import Fault, GenerationLimits, Request, Sampling, TokenEvent
from scheduler_svc.tenancy import PriorityClasses, in_scope
from scheduler_svc.workers import WorkerInfo
from servekit.tokenizer import Tokenizer, TokenizerUnavailableError
from servekit.validation import (
    MAX_STOP_TOKEN_IDS,
    PROMPT_BYTES_PER_TOKEN,
    clip,
    validate_conversation_id,
    validate_count,
    validate_generation,
    validate_request_id,
    validate_sampling,
    validate_stop,
    validate_tenant,
    validate_text_bytes,
    validate_ttl,
)

log = logging.getLogger(__name__)


class StepChannel(Protocol):
    """One worker's step stream: plans go out, and their results come back in the same order."""

    async def send(self, plan: StepPlan) -> None: ...

    async def receive(self) -> StepOutput: ...


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A request as the public API received it, before validation."""

    prompt_text: str | None
    prompt_ids: Sequence[int] | None  # the message's own list: copied only once it is checked
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    tenant: str = "default"
    priority: int = 0
    request_id: str | None = None
    stop: tuple[str, ...] = ()  # stop strings, matched on the output text (deltas.py)
    retain_ttl_s: float | None = None  # None: the server's default (retain_generate_ttl_s)


@dataclass(frozen=True, slots=True)
class NewTurn:
    """One chat turn as the public API received it."""

    conversation_id: str | None  # None: start a new conversation
    tenant: str
    system: str | None
    message: str
    ttl_s: float | None  # None: keep the conversation's (or the default) ttl
    request: NewRequest  # sampling, priority, request id; no prompt


class RequestStream:
    """Events of one request, in order; the last one has ``finished`` set. Filled by the
    frontend's worker sessions (``put``), read by one API call as deltas (tokens + detokenised
    text). With stop strings the text is detokenised and matched on every event as it is put
    (so a stop string is seen at the token that completes it); without, once per delta."""

    def __init__(self, request: Request, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.request = request
        self._queue: asyncio.Queue[tuple[TokenEvent, str]] = asyncio.Queue()
        self._text = TextDelta(tokenizer, stop)
        self._eager = bool(stop)
        self._ended = False

    def put(self, event: TokenEvent) -> bool:
        """Queues `event`. True when its text completed a stop string: the event becomes the
        stream's last and the caller must finish the request (as stopped). Events after the
        last one are dropped."""
        if self._ended:
            return False
        text = self._text.next(self.request.output_ids, event.finished) if self._eager else ""
        stopped = self._text.stopped
        self._ended = event.finished or stopped
        self._queue.put_nowait((event._replace(finished=self._ended), text))
        return stopped

    async def next_delta(self) -> Delta:
        """Waits for the next event, then takes every event already queued with it."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        tokens = tuple(t for event, _ in items for t in event.token_ids)
        finished = any(event.finished for event, _ in items)
        if self._eager:
            text = "".join(text for _, text in items)
        else:
            text = self._text.next(self.request.output_ids, finished)
        return Delta(tokens, text, finished)


class Frontend:
    """The scheduler's asyncio layer: validates and tokenizes requests at the edge, owns the
    request streams and the conversation table, and runs one session per worker (plan, exchange,
    update). Called by the servicers; calls the core, and pokes the host agent when the core
    queued host work. Invariant: every core call happens on the event loop thread, and every
    stream it opened is closed once (a live request whose client left is cancelled)."""

    def __init__(
        self,
        core: SchedulerCore,
        tokenizer: Tokenizer,
        *,
        vocab_size: int,
        max_model_len: int,
        max_tokens_limit: int,
        tenants: Mapping[str, float] | None = None,
        max_prompt_bytes: int | None = None,
    ) -> None:
        self.core = core
        self.tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._max_model_len = max_model_len
        self._max_tokens_limit = max_tokens_limit
        # A text prompt, chat message or system prompt longer than this many UTF-8 bytes is
        # refused before it is tokenised (max_model_len * PROMPT_BYTES_PER_TOKEN by default).
        self.max_prompt_bytes = (
            max_prompt_bytes
            if max_prompt_bytes is not None
            else max_model_len * PROMPT_BYTES_PER_TOKEN
        )
        self._tenants = dict(tenants) if tenants else None
        self.conversations = Conversations(tokenizer)
        # Caps on each tenant's priority (API keys' priority=P); empty: none.
        self.priority_classes = PriorityClasses()
        # Plain generate requests keep their KV after finishing only when this is set.
        self.retain_generate_ttl_s: float | None = None
        self._streams: dict[str, RequestStream] = {}
        self._changed = asyncio.Condition()
        self._version = 0
        self._closing = False
        self.on_step: Callable[[str, StepPlan, StepOutput], None] | None = None
        # Called once per request when its stream closes (it has finished by then, whatever
        # the reason): the one place a request's end is counted (metrics.py).
        self.on_finish: Callable[[Request], None] | None = None
        # Called when the core queued host-memory work (reserve, pin, free) for the host agent.
        self.on_host_ops: Callable[[], None] | None = None

    # ---------------------------------------------------------------- requests

    @property
    def max_model_len(self) -> int:
        """The model's context: prompt + output tokens of one request at most."""
        return self._max_model_len

    def prepare_tenant(self, tenant: str) -> str:
        """The tenant's name ("" is "default"); InvalidArgument if malformed or not configured
        (the message never quotes the name)."""
        tenant = tenant or "default"
        with invalid_argument():
            validate_tenant(tenant)
        if self._tenants is not None and tenant not in self._tenants:
            raise InvalidArgument("unknown tenant (not configured with --tenants)")
        return tenant

    def _check_request(self, new: NewRequest) -> str:
        """Every check of a request that needs no prompt, each bounded before any work; returns
        the tenant. InvalidArgument (a short message, no input quoted past a few characters)."""
        tenant = self.prepare_tenant(new.tenant)
        with invalid_argument():
            if new.request_id is not None:
                validate_request_id(new.request_id)
            validate_count(len(new.stop_token_ids), "stop_token_ids", MAX_STOP_TOKEN_IDS)
            if new.retain_ttl_s is not None:
                validate_ttl(new.retain_ttl_s, "retain_ttl_s")
            validate_sampling(new.temperature, new.top_p, new.top_k, new.seed)
        if new.max_tokens > self._max_tokens_limit:
            raise InvalidArgument(
                f"max_tokens must be <= {self._max_tokens_limit}, got {new.max_tokens}"
            )
        for t in new.stop_token_ids:
            if not 0 <= t < self._vocab_size:
                raise InvalidArgument(
                    f"stop token id {t} is outside the vocabulary [0, {self._vocab_size})"
                )
        self._check_stop(new.stop)
        return tenant

    def prepare(self, new: NewRequest) -> tuple[list[int], Sampling, GenerationLimits, str]:
        """Validates, then tokenizes; InvalidArgument (a short message) otherwise. Sizes come
        first: an over-long text never reaches the tokenizer, an over-long id list is never
        copied."""
        tenant = self._check_request(new)
        if (new.prompt_text is None) == (new.prompt_ids is None):
            raise InvalidArgument("give exactly one of prompt text or prompt token ids")
        with invalid_argument():
            if new.prompt_text is not None:
                validate_text_bytes(new.prompt_text, "the prompt text", self.max_prompt_bytes)
                prompt_ids = self.tokenizer.encode_prompt(new.prompt_text)
            else:
                ids = new.prompt_ids or ()
                if len(ids) >= self._max_model_len:
                    raise ValueError(
                        f"prompt has {len(ids)} token ids, the model's context (max_model_len) "
                        f"is {self._max_model_len}: the prompt must be shorter than that"
                    )
                prompt_ids = list(ids)
            validate_generation(
                prompt_ids,
                new.max_tokens,
                vocab_size=self._vocab_size,
                max_model_len=self._max_model_len,
            )
        sampling = Sampling(new.temperature, new.top_p, new.top_k, new.seed)
        limits = GenerationLimits(
            max_tokens=new.max_tokens,
            stop_token_ids=frozenset(new.stop_token_ids),
            ignore_eos=new.ignore_eos,
        )
        return prompt_ids, sampling, limits, tenant

    def _check_stop(self, stop: tuple[str, ...]) -> None:
        """Stop strings: at most 16, each 1-256 characters, and a tokenizer that gives text."""
        if not stop:
            return
        with invalid_argument():
            validate_stop(stop)
            try:
                self.tokenizer.decode([])
            except TokenizerUnavailableError as err:
                raise ValueError(f"stop strings need the output text, but {err}") from None

    async def open(self, new: NewRequest, *, retain_ttl_s: float | None = None) -> RequestStream:
        """Queues a request. Raises Unavailable (no worker, or shutting down), InvalidArgument
        (bad input) or ResourceExhausted (it cannot fit). Its KV is retained when it finishes
        with ttl `retain_ttl_s` if given (a chat turn), else the request's own, else the
        server's default."""
        if self._closing:
            raise Unavailable("the scheduler is shutting down")
        if not self.core.workers:
            raise Unavailable("no worker has joined yet")
        prompt_ids, sampling, limits, tenant = self.prepare(new)
        if retain_ttl_s is None:
            retain_ttl_s = new.retain_ttl_s
        if retain_ttl_s is None:
            retain_ttl_s = self.retain_generate_ttl_s
        req = self.core.submit(
            prompt_ids=prompt_ids,
            sampling=sampling,
            limits=limits,
            tenant=tenant,
            priority=self.priority_classes.apply(tenant, new.priority),
            request_id=new.request_id,
            retain_ttl_s=retain_ttl_s,
        )
        stream = RequestStream(req, self.tokenizer, new.stop)
        self._streams[req.request_id] = stream
        await self.notify()
        return stream

    async def open_turn(self, turn: NewTurn) -> tuple[Conversation, list[int], RequestStream]:
        """Starts a chat turn: the conversation's exact history ids + the new message. Every
        bound (ids, ttl, message and system bytes, the request's own) is checked first."""
        if self._closing:
            raise Unavailable("the scheduler is shutting down")
        tenant = self._check_request(replace(turn.request, tenant=turn.tenant))
        with invalid_argument():
            if turn.conversation_id is not None:
                validate_conversation_id(turn.conversation_id)
            if turn.ttl_s is not None:
                validate_ttl(turn.ttl_s, "ttl_s")
            validate_text_bytes(turn.message, "message", self.max_prompt_bytes)
            if turn.system is not None:
                validate_text_bytes(turn.system, "system", self.max_prompt_bytes)
        conv = self.conversations.open(
            turn.conversation_id, tenant, system=turn.system, ttl_s=turn.ttl_s
        )
        prompt = self.conversations.begin_turn(conv, turn.message)
        try:
            new = replace(turn.request, prompt_ids=prompt, prompt_text=None, tenant=conv.tenant)
            stream = await self.open(new, retain_ttl_s=conv.ttl_s)
        except BaseException:
            self.conversations.end_turn(conv, prompt, [], ok=False)
            raise
        return conv, prompt, stream

    def end_turn(self, conv: Conversation, prompt: list[int], req: Request) -> None:
        ok = req.finish_reason is not None and req.finish_reason.value in ("stop", "length")
        self.conversations.end_turn(conv, prompt, list(req.output_ids), ok)

    def end_conversation(self, conversation_id: str, tenant: str) -> int:
        """Deletes a conversation and its retained KV; returns how many blocks were dropped."""
        tenant = self.prepare_tenant(tenant)
        with invalid_argument():
            validate_conversation_id(conversation_id)
        conv = self.conversations.end(conversation_id, tenant)
        freed = self.core.free_retained(conv.tenant, conv.history)
        self._poke_host_agent()
        return freed

    async def close(self, stream: RequestStream) -> None:
        """Ends a stream; a request still live (the client left) is cancelled and freed. Then
        ``on_finish`` sees the request (once per stream)."""
        req = stream.request
        if not req.is_finished:
            self.core.cancel(req.request_id)
            log.info("client left; request cancelled", extra={"request": req.request_id})
            await self.notify()
        opened = self._streams.pop(req.request_id, None) is not None
        self.core.forget(req.request_id)
        if opened and self.on_finish is not None:
            self.on_finish(req)

    def _find(self, request_id: str, scope: str | None) -> Request:
        """The request of that id within `scope` (None: any tenant's). NotFound, with the same
        message by the same path, for an unknown id and for another tenant's request."""
        with invalid_argument():
            validate_request_id(request_id)
        req = self.core.get(request_id)
        if req is None or not in_scope(scope, req.tenant):
            raise NotFound(f"request {clip(request_id)} not found")
        return req

    async def cancel(self, request_id: str, scope: str | None = None) -> bool:
        """The client cancels its request within `scope` (its stream ends as CANCELLED); False
        when it had already finished."""
        self._find(request_id, scope)
        event = self.core.cancel(request_id)
        if event is None:
            return False
        self._dispatch([event])
        await self.notify()
        return True

    async def set_priority(self, request_id: str, priority: int, scope: str | None = None) -> None:
        """Changes a live request's priority (capped at its tenant's class) within `scope`."""
        req = self._find(request_id, scope)
        if not self.core.set_priority(
            request_id, self.priority_classes.apply(req.tenant, priority)
        ):
            raise NotFound(f"request {clip(request_id)} not found")
        await self.notify()

    def _poke_host_agent(self) -> None:
        if self.on_host_ops is not None and self.core.has_host_ops:
            self.on_host_ops()

    def _dispatch(self, events: list[TokenEvent]) -> None:
        """Hands each event to its stream as it happens; a request whose text has just reached
        a stop string is finished in the core at once (its last token is the one that did)."""
        for event in events:
            stream = self._streams.get(event.request.request_id)
            if stream is not None and stream.put(event):
                self.core.finish_on_stop_string(event.request.request_id)

    async def notify(self) -> None:
        """Something changed (a request, a worker, a host answer): idle sessions plan again."""
        self._poke_host_agent()
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    # ----------------------------------------------------------------- workers

    async def worker_session(
        self, info: WorkerInfo, channel: StepChannel, joined: Callable[[], Awaitable[None]]
    ) -> None:
        """Runs one worker until its stream ends (or this task is cancelled): plans are sent
        while fewer than ``depth`` are unanswered (two with asynchronous scheduling: the next is
        planned while the worker runs one), and each result is applied as it comes.

        Raises AlreadyExists or FailedPrecondition (nothing changed) if a worker of that id has
        already joined or it uses another block size.
        """
        self.core.add_worker(info)
        await joined()
        await self.notify()
        wid = info.worker_id
        depth = 2 if self.core.config.async_scheduling else 1
        sent: deque[StepPlan] = deque()
        try:
            while not self._closing:
                seen = self._version
                if len(sent) < depth:
                    plan = self.core.schedule(wid)
                    self._poke_host_agent()
                    if plan is not None:
                        await channel.send(plan)
                        sent.append(plan)
                        continue
                    if not sent:
                        await self._wait_for_change(seen)
                        continue
                output = await channel.receive()
                self._dispatch(self.core.update_from_output(wid, output))
                self._poke_host_agent()
                done = sent.popleft()
                if self.on_step is not None:
                    self.on_step(wid, done, output)
        finally:
            requeued = self.core.remove_worker(wid)
            if requeued:
                log.warning("worker left with requests", extra={"worker": wid, "n": requeued})
            await self.notify()

    async def _wait_for_change(self, seen: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != seen or self._closing)

    def sizes(self) -> dict[str, int]:
        """Entries of the scheduler's tables: the core's, open streams, conversations (the
        memory debug aid logs them, servekit/memtrace.py)."""
        return {
            **self.core.sizes(),
            "streams": len(self._streams),
            "conversations": len(self.conversations),
        }

    async def shutdown(self) -> None:
        """Stops sessions from planning further and ends every open stream as aborted with
        Fault.UNAVAILABLE (its call ends UNAVAILABLE, never CANCELLED: the client did not)."""
        self._closing = True
        for stream in list(self._streams.values()):
            req = stream.request
            if not req.is_finished:
                event = self.core.abort(
                    req.request_id, "the scheduler is shutting down", Fault.UNAVAILABLE
                )
                if event is not None:
                    stream.put(event)
        await self.notify()
