"""Runs a :class:`~client.loadgen.workloads.Workload` against a server through a
:class:`~client.loadgen.transport.Transport`: the scheduler's gRPC API (``HOST:PORT``,
``unix://``) or the OpenAI-compatible HTTP door (``http://HOST:PORT``; multi-turn histories are
then resent whole each turn, and the server's stats come from ``stats_target`` when given).

Open loop: each session starts at its arrival time whatever the server's state, and by default
nothing queues in the client: a fairness benchmark must show the server's order, not a
first-come-first-served queue of its own. Optional caps: ``concurrency`` requests in flight in
all, ``tenant_concurrency`` per tenant (one tenant's backlog then cannot hold another's
requests); a request that waits for a slot counts that wait in its latency.
Bounded: no request starts after ``duration_s`` or beyond ``max_requests``;
requests still running ``drain_timeout_s`` after the duration are cancelled. :meth:`Runner.stop`
(Ctrl-C) or too many consecutive failures end the run early; either way the result holds every
request issued so far.

Two warnings (each said once through ``on_warning`` as it first happens, and as a note of the
result): requests issued later than their scheduled arrival by more than ``warn_after_s`` (the
load generator cannot keep up), and requests that waited that long in the client for a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from client import SamplingOptions, Stats
from client.loadgen.stats import RequestRecord, Status, late, percentile, queued
from client.loadgen.transport import (
    Conversation,
    RequestFailed,
    TargetError,
    Transport,
    is_http,
    open_transport,
)
from client.loadgen.workloads import Session, Turn, Workload

__all__ = ["Live", "RunConfig", "RunResult", "Runner", "TargetError", "probe_max_model_len"]

WARMUP_TENANT = "lg-warmup"
HTTP_HISTORY_NOTE = (
    "over HTTP every turn resends its whole history as token ids (OpenAI's API has no "
    "conversations): earlier turns' KV is reused only by content address, when the scheduler "
    "retains finished requests (its --retain-generate)"
)


@dataclass(frozen=True, slots=True)
class RunConfig:
    target: str
    concurrency: int | None = None  # requests in flight in all (None: no cap)
    tenant_concurrency: int | None = None  # requests in flight per tenant (None: no cap)
    request_timeout_s: float = 300.0
    drain_timeout_s: float = 10.0
    max_consecutive_failures: int = 20
    connect_timeout_s: float = 5.0
    warmup_requests: int = 2
    use_chat: bool = False
    update_running_priorities: bool = True
    warn_after_s: float = 0.05  # behind schedule / waiting in the client by more: a warning
    stats_target: str | None = None  # HTTP target: the scheduler's gRPC address, for its stats
    model_name: str | None = None  # HTTP target: the model to ask for (None: the door's first)
    # The API key sent on every call (None: $FASTSWITCH_API_KEY); never shown in a repr.
    api_key: str | None = field(default=None, repr=False)
    tls_ca: str | None = None  # the CA of a TLS target (docs/security.md)
    # A gRPC target: every Generate on one GenerateMany call (False: a call per request).
    multiplex: bool = True

    def __post_init__(self) -> None:
        if self.use_chat and is_http(self.target):
            raise ValueError(
                "the Chat API is gRPC only: over an http:// target each turn sends its whole "
                "history (drop --use-chat)"
            )
        if not is_http(self.target) and (self.stats_target or self.model_name):
            raise ValueError(
                "--stats-target and --model-name are for an http:// target; "
                f"got target {self.target!r}"
            )
        for name in ("concurrency", "tenant_concurrency", "max_consecutive_failures"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("request_timeout_s", "connect_timeout_s", "warn_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.drain_timeout_s < 0 or self.warmup_requests < 0:
            raise ValueError("drain_timeout_s and warmup_requests must be >= 0")


@dataclass(frozen=True, slots=True)
class RunResult:
    records: tuple[RequestRecord, ...]
    wall_s: float
    stopped: str | None  # why the run ended early (None: it ran its course)
    notes: tuple[str, ...]
    before: Stats | None
    after: Stats | None
    stats_error: str | None  # why the scheduler's stats are missing
    kind: str = "grpc"  # the door the run went through: "grpc" | "http"


@dataclass(frozen=True, slots=True)
class Live:
    """What the progress bar shows."""

    elapsed_s: float
    duration_s: float
    issued: int
    planned: int
    done: int
    failed: int
    in_flight: int
    ttft_p50_s: float | None
    tbt_mean_s: float | None


def transport_of(cfg: RunConfig) -> Transport:
    """The transport a run config names (its keep-alive pool sized to the concurrency)."""
    return open_transport(
        cfg.target,
        timeout_s=cfg.request_timeout_s,
        stats_target=cfg.stats_target,
        model_name=cfg.model_name,
        max_connections=cfg.concurrency,
        connect_timeout_s=cfg.connect_timeout_s,
        api_key=cfg.api_key,
        tls_ca=cfg.tls_ca,
        multiplex=cfg.multiplex,
    )


async def probe_max_model_len(
    target: str,
    timeout_s: float = 5.0,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    tls_ca: str | None = None,
) -> int | None:
    """The model's context as the server reports it (GetStats, or the HTTP door's
    ``/v1/models``); None when it is unreachable or does not say (an older server)."""
    async with open_transport(
        target, timeout_s=timeout_s, model_name=model_name, api_key=api_key, tls_ca=tls_ca
    ) as t:
        return await t.max_model_len(timeout_s=timeout_s)


class Runner:
    def __init__(
        self,
        workload: Workload,
        cfg: RunConfig,
        *,
        on_progress: Callable[[Live], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        progress_interval_s: float = 0.25,
    ) -> None:
        self._w = workload
        self._cfg = cfg
        self._on_progress = on_progress
        self._on_warning = on_warning
        self._warned: set[str] = set()
        self._interval = progress_interval_s
        self._run_id = uuid.uuid4().hex[:8]
        self._records: list[RequestRecord] = []
        self._inflight: dict[str, set[str]] = defaultdict(set)
        self._recent_ttft: deque[float] = deque(maxlen=64)
        self._recent_tbt: deque[float] = deque(maxlen=64)
        self._failures_in_a_row = 0
        self._stopped: str | None = None
        self._notes: list[str] = []
        self._stopping = asyncio.Event()  # asyncio primitives bind to a loop on first use
        self._gate = None if cfg.concurrency is None else asyncio.Semaphore(cfg.concurrency)
        self._tenant_gates: dict[str, asyncio.Semaphore] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0

    def stop(self, reason: str) -> None:
        """Ends the run early (from the run's event loop, e.g. a signal handler): no new
        requests; those in flight are cancelled. The first reason given is kept."""
        if self._stopped is None:
            self._stopped = reason
        self._stopping.set()

    async def run(self) -> RunResult:
        """Runs the workload; TargetError when the target cannot be benchmarked at all."""
        self._loop = asyncio.get_running_loop()
        async with transport_of(self._cfg) as api:
            await self._preflight(api)
            before = await self._stats(api)
            self._t0 = self._loop.time()
            await self._main(api)
            wall_s = self._now()
            self._notes.extend(self._warning_notes())
            if api.kind == "http" and any(len(s.turns) > 1 for s in self._w.sessions):
                self._notes.append(HTTP_HISTORY_NOTE)
            after, stats_error = None, api.stats_note
            if stats_error is None:
                try:
                    after = await api.stats(timeout_s=self._cfg.connect_timeout_s)
                except RequestFailed as err:
                    stats_error = f"the scheduler's stats are unavailable after the run ({err})"
        return RunResult(
            tuple(self._records),
            wall_s,
            self._stopped,
            tuple(self._notes),
            before,
            after,
            stats_error,
            api.kind,
        )

    # ------------------------------------------------------------------ set-up

    async def _preflight(self, api: Transport) -> None:
        """The target answers and has a worker; the warm-up requests (through the same
        transport as the run's) complete."""
        await api.check(timeout_s=self._cfg.connect_timeout_s)
        for k in range(self._cfg.warmup_requests):
            stream = api.stream(
                [ord(c) for c in f"warm-up request {k}"],
                options=SamplingOptions(max_tokens=4, ignore_eos=True),
                tenant=WARMUP_TENANT,
                priority=0,
                request_id=f"lg-{self._run_id}-warmup-{k}",
                timeout_s=self._cfg.request_timeout_s,
            )
            try:
                async with contextlib.aclosing(stream):
                    async for _ in stream:
                        pass
            except RequestFailed as err:
                raise TargetError(f"the warm-up request failed: {err}") from None

    async def _stats(self, api: Transport) -> Stats | None:
        if api.stats_note is not None:
            return None
        try:
            return await api.stats(timeout_s=self._cfg.connect_timeout_s)
        except RequestFailed:
            return None

    # ------------------------------------------------------------------ the run

    async def _main(self, api: Transport) -> None:
        sessions: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as tg:
            helpers = [tg.create_task(self._progress()), tg.create_task(self._priorities(api))]
            for s in self._w.sessions:
                if not await self._sleep_until(s.arrival_s) or self._exhausted():
                    break
                task = tg.create_task(self._session(api, s))
                sessions.add(task)
                task.add_done_callback(sessions.discard)
            await self._drain(sessions)
            if sessions and self._stopped is None:
                self._notes.append(
                    f"{len(sessions)} sessions still running {self._cfg.drain_timeout_s:g} s "
                    "after the duration were cancelled (--drain-timeout)"
                )
            for task in (*sessions, *helpers):
                task.cancel()
        if self._on_progress is not None:
            self._on_progress(self._live())

    async def _drain(self, sessions: set[asyncio.Task[None]]) -> None:
        """Waits for the sessions until the drain deadline or a stop."""
        end = self._w.duration_s + self._cfg.drain_timeout_s
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while sessions and not self._stopping.is_set() and self._now() < end:
                await asyncio.wait(
                    {*sessions, stop},
                    timeout=end - self._now(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)

    async def _session(self, api: Transport, s: Session) -> None:
        chat = api.conversation(s.tenant) if self._cfg.use_chat else None
        history: list[int] = []
        try:
            for k, turn in enumerate(s.turns):
                scheduled = s.arrival_s if k == 0 else self._now() + turn.think_s
                if (k and not await self._sleep_until(scheduled)) or self._exhausted():
                    return
                prompt = [*history, *turn.message]
                rec = RequestRecord(
                    request_id=f"lg-{self._run_id}-{len(self._records):06d}",
                    session_id=s.session_id,
                    tenant=s.tenant,
                    turn=k,
                    priority=self._priority(s.tenant),
                    scheduled_s=scheduled,
                    prompt_tokens=len(prompt),
                    max_tokens=turn.max_tokens,
                    issued_s=self._now(),
                )
                self._records.append(rec)
                if rec.lag_s > self._cfg.warn_after_s:
                    self._warn_once(
                        "late",
                        f"{rec.request_id} was issued {rec.lag_s * 1e3:.0f} ms "
                        "after its scheduled arrival: the load generator is falling behind",
                    )
                reply = await self._request(api, chat, rec, prompt, turn)
                if rec.status is not Status.OK:
                    return
                history = prompt + reply
        finally:
            if chat is not None:
                await chat.end(timeout_s=self._cfg.connect_timeout_s)

    async def _request(
        self,
        api: Transport,
        chat: Conversation | None,
        rec: RequestRecord,
        prompt: list[int],
        turn: Turn,
    ) -> list[int]:
        """Sends one request once it has a slot and fills in ``rec``; returns the reply's token
        ids. A CancelledError leaves ``rec`` CANCELLED (``end_s`` set, also while it waited for
        a slot) and propagates."""
        reply: list[int] = []
        try:
            async with self._slot(rec.tenant):
                rec.sent_s = self._now()
                self._warn_if_queued(rec)
                self._inflight[rec.tenant].add(rec.request_id)
                await self._stream(api, chat, rec, prompt, turn, reply)
        finally:
            rec.end_s = self._now()
            self._inflight[rec.tenant].discard(rec.request_id)
            if rec.sent_s is None:  # ended (the run's drain) while still waiting for a slot
                self._warn_if_queued(rec)
        if rec.ttft_s is not None and rec.status is Status.OK:
            self._recent_ttft.append(rec.ttft_s)
            if rec.output_tokens > 1:
                self._recent_tbt.append(sum(rec.tbt_s) / (rec.output_tokens - 1))
        return reply

    async def _stream(
        self,
        api: Transport,
        chat: Conversation | None,
        rec: RequestRecord,
        prompt: list[int],
        turn: Turn,
        reply: list[int],
    ) -> None:
        """One request: a completion of the whole prompt, or the turn's message on the
        conversation. Server failures mark ``rec`` FAILED; the tokens go to ``reply``. Every
        piece is stamped here, whatever the transport, so both doors are timed alike."""
        sampling = SamplingOptions(max_tokens=rec.max_tokens, ignore_eos=True)
        timeout_s = self._cfg.request_timeout_s
        try:
            if chat is None:
                stream = api.stream(
                    prompt,
                    options=sampling,
                    tenant=rec.tenant,
                    priority=rec.priority,
                    request_id=rec.request_id,
                    timeout_s=timeout_s,
                )
            else:
                message = bytes(turn.message).decode("ascii")
                stream = chat.send(
                    message,
                    options=sampling,
                    priority=rec.priority,
                    request_id=rec.request_id,
                    timeout_s=timeout_s,
                )
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    rec.add_tokens(len(piece.token_ids), self._now())
                    reply.extend(piece.token_ids)
                    if piece.metrics is not None:
                        rec.server = piece.metrics
                    if piece.usage is not None:
                        rec.usage = piece.usage
            rec.status = Status.OK
            self._failures_in_a_row = 0
        except RequestFailed as err:
            rec.status, rec.error = Status.FAILED, f"{err.code}: {err.details}"[:300]
            self._failed(err)

    def _failed(self, err: RequestFailed) -> None:
        self._failures_in_a_row += 1
        if self._cfg.use_chat and err.code == "UNIMPLEMENTED":
            self.stop(f"the server does not serve Chat ({err}); run with --no-chat")
        elif self._failures_in_a_row >= self._cfg.max_consecutive_failures:
            self.stop(f"the target failed {self._failures_in_a_row} requests in a row ({err})")

    @contextlib.asynccontextmanager
    async def _slot(self, tenant: str) -> AsyncIterator[None]:
        """A slot under the caps (the tenant's first, so that a tenant at its cap holds none
        of the shared ones); no wait at all without caps."""
        async with contextlib.AsyncExitStack() as stack:
            if (n := self._cfg.tenant_concurrency) is not None:
                gate = self._tenant_gates.setdefault(tenant, asyncio.Semaphore(n))
                await stack.enter_async_context(gate)
            if self._gate is not None:
                await stack.enter_async_context(self._gate)
            yield

    def _warn_if_queued(self, rec: RequestRecord) -> None:
        """The live twin of the run's note on client queueing (same measure, same limit)."""
        if (wait := rec.queued_s or 0.0) > self._cfg.warn_after_s:
            self._warn_once(
                "queued",
                f"{rec.request_id} waited {wait:.2f} s in the client "
                "for a concurrency slot: the server sees the client's queue order",
            )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            if self._on_warning is not None:
                self._on_warning(message)

    def _warning_notes(self) -> list[str]:
        """What the live warnings were about, over the whole run."""
        limit, notes = self._cfg.warn_after_s, []
        if (behind := late(self._records, limit)).requests:
            notes.append(
                f"WARNING: {behind.requests} requests were issued more than {limit * 1e3:g} ms "
                f"behind their scheduled arrival (at most {behind.longest_s * 1e3:.0f} ms): "
                "the load generator could not keep up, so the offered load was lower than asked"
            )
        if (waited := queued(self._records, limit)).requests:
            notes.append(
                f"WARNING: {waited.requests} requests waited in the client for a concurrency slot "
                f"(longest {waited.longest_s:.2f} s): the server saw the client's first-come-"
                "first-served queue, not the workload (raise --concurrency or leave it off; "
                "--tenant-concurrency caps each tenant on its own)"
            )
        return notes

    async def _priorities(self, api: Transport) -> None:
        """Moves the requests in flight to their tenant's new level when it changes."""
        schedule = self._w.priorities
        if schedule is None or not self._cfg.update_running_priorities:
            return
        if not api.can_set_priority:
            self._notes.append(
                "running requests kept their priority level (new levels applied to new "
                "requests only): the HTTP door cannot change it; give --stats-target"
            )
            return
        moved = 0
        try:
            for t, tenant, level in schedule.changes():
                if not await self._sleep_until(t):
                    return
                for rid in sorted(self._inflight[tenant]):
                    try:  # best effort: the request may have finished meanwhile
                        await api.set_priority(rid, level, timeout_s=self._cfg.connect_timeout_s)
                        moved += 1
                    except RequestFailed:
                        continue
        finally:
            self._notes.append(f"{moved} running requests moved to a new priority level")

    async def _progress(self) -> None:
        if self._on_progress is None:
            return
        while True:
            self._on_progress(self._live())
            await asyncio.sleep(self._interval)

    # ------------------------------------------------------------------ helpers

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time() - self._t0

    def _priority(self, tenant: str) -> int:
        schedule = self._w.priorities
        return 0 if schedule is None else schedule.at(tenant, self._now())

    def _exhausted(self) -> bool:
        return len(self._records) >= self._w.max_requests or self._stopping.is_set()

    async def _sleep_until(self, t: float) -> bool:
        """Waits until run time t; False (at once) when t is past the duration or the run is
        stopping, so the caller issues nothing more."""
        if t >= self._w.duration_s or self._stopping.is_set():
            return False
        delay = t - self._now()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
        return not self._stopping.is_set()

    def _live(self) -> Live:
        return Live(
            elapsed_s=self._now(),
            duration_s=self._w.duration_s,
            issued=len(self._records),
            planned=self._w.planned_requests,
            done=sum(r.status is Status.OK for r in self._records),
            failed=sum(r.status is Status.FAILED for r in self._records),
            in_flight=sum(len(v) for v in self._inflight.values()),
            ttft_p50_s=percentile(list(self._recent_ttft), 50),
            tbt_mean_s=(
                sum(self._recent_tbt) / len(self._recent_tbt) if self._recent_tbt else None
            ),
        )
