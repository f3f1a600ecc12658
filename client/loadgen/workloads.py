"""Workloads: what a benchmark sends and when, as plain data built from a seed.

A :class:`Workload` is a list of :class:`Session` s -- a conversation, or one request -- each
from one tenant, starting at ``arrival_s`` and sending its turns in order. A turn's prompt is
the whole history (earlier prompts and replies) plus its new ``message``; a single request is
a session of one turn. The ``fairness`` and ``multiturn`` workloads may carry a
:class:`PrioritySchedule` (``--priority-pattern``): each tenant's level over time, which the
runner puts on every new request and moves running requests to when it changes. Every length
is scaled by ``length_scale`` and then clipped to the model's context; :attr:`Workload.notes`
says what was scaled or clipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from client.loadgen.arrivals import ARRIVALS, arrival_times
from client.loadgen.dists import parse_dist
from client.loadgen.priorities import PATTERNS, PrioritySchedule, make_schedule
from client.loadgen.traces import (
    MOONCAKE_BLOCK_TOKENS,
    TOKEN_HI,
    TOKEN_LO,
    HashBlockTokens,
    TraceRecord,
    default_trace,
    read_azure,
    read_mooncake,
)

WORKLOADS = ("multiturn", "azure-conv", "azure-code", "mooncake", "fairness")
TRACE_WORKLOADS = ("azure-conv", "azure-code", "mooncake")
#: Mooncake prompts average 15k tokens; 1/16 makes a 512-token block 32 tokens (tiny: 2048 ctx).
DEFAULT_LENGTH_SCALE = {"mooncake": 1 / 16}
DEFAULT_RATE = {"multiturn": 1.0, "fairness": 40.0}  # conversations/s resp. requests/s in all


@dataclass(frozen=True, slots=True)
class Turn:
    message: tuple[int, ...]  # token ids new in this turn (the whole prompt of a single request)
    max_tokens: int
    think_s: float = 0.0  # pause after the previous reply before this turn is sent


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    tenant: str
    arrival_s: float  # seconds after the run's start
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    sessions: tuple[Session, ...]  # in arrival order
    tenants: tuple[str, ...]
    duration_s: float
    max_requests: int
    notes: tuple[str, ...] = ()
    priorities: PrioritySchedule | None = None

    @property
    def planned_requests(self) -> int:
        return min(self.max_requests, sum(len(s.turns) for s in self.sessions))


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Everything that decides a workload; validated on construction (ValueError)."""

    workload: str
    seed: int = 0
    duration_s: float = 60.0
    max_requests: int = 10_000
    arrivals: str | None = None  # None: the trace's own for traces, poisson otherwise
    rate: float | None = None  # None: DEFAULT_RATE, or the trace's mean rate
    burstiness: float = 1.0
    trace: Path | None = None
    time_scale: float = 1.0
    trace_offset_s: float = 0.0
    length_scale: float | None = None  # None: DEFAULT_LENGTH_SCALE or 1
    max_model_len: int = 2048
    max_prompt_tokens: int | None = None  # None: 3/4 of max_model_len
    max_output_tokens: int | None = None  # None: 1/4 of max_model_len
    tenants: int | None = None  # None: 0 (one per conversation) / 3 (fairness) / 1 (traces)
    turns: str = "geom:5.5"
    prompt_len: str = "lognormal:80,1.0"
    output_len: str = "lognormal:240,0.8"
    think_time: str = "exp:3"
    tenant_rates: tuple[float, ...] = ()
    tenant_prompt_lens: tuple[str, ...] = ()
    tenant_output_lens: tuple[str, ...] = ()
    priority_pattern: str = "none"
    priority_levels: int = 3
    priority_interval_s: float = 5.0
    markov_stay: float = 0.7

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise ValueError(
                f"workload must be one of {', '.join(WORKLOADS)}, got {self.workload!r}"
            )
        for name in ("duration_s", "time_scale", "burstiness"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")
        if self.arrivals is not None and self.arrivals not in ARRIVALS:
            raise ValueError(
                f"arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}"
            )
        if self.arrivals == "trace" and self.workload not in TRACE_WORKLOADS:
            raise ValueError(f"--arrivals trace needs a trace workload, not {self.workload}")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.length_scale is not None and not self.length_scale > 0:
            raise ValueError(f"length_scale must be > 0, got {self.length_scale}")
        if self.trace_offset_s < 0:
            raise ValueError(f"trace_offset_s must be >= 0, got {self.trace_offset_s}")
        if self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if not 1 <= self.prompt_cap < self.max_model_len:
            raise ValueError(
                f"max_prompt_tokens must be in [1, {self.max_model_len - 1}] (the context), "
                f"got {self.prompt_cap}"
            )
        if self.output_cap < 1:
            raise ValueError(f"max_output_tokens must be >= 1, got {self.output_cap}")
        if self.tenant_count < (0 if self.workload == "multiturn" else 1):
            raise ValueError(f"tenants must be >= 1, got {self.tenant_count}")
        for text in (self.turns, self.prompt_len, self.output_len, self.think_time):
            parse_dist(text)
        if self.workload == "fairness":
            self._check_fairness()
        if self.priority_pattern not in PATTERNS:
            raise ValueError(f"priority pattern must be one of {', '.join(PATTERNS)}")

    def _check_fairness(self) -> None:
        n = self.tenant_count
        for name in ("tenant_rates", "tenant_prompt_lens", "tenant_output_lens"):
            given = getattr(self, name)
            if given and len(given) != n:
                raise ValueError(f"{name} lists {len(given)} values for {n} tenants")
        if any(not r > 0 for r in self.tenant_rates):
            raise ValueError(f"tenant rates must be > 0, got {list(self.tenant_rates)}")
        for text in (*self.tenant_prompt_lens, *self.tenant_output_lens):
            parse_dist(text)

    @property
    def prompt_cap(self) -> int:
        return self.max_prompt_tokens or self.max_model_len * 3 // 4

    @property
    def output_cap(self) -> int:
        return self.max_output_tokens or max(1, self.max_model_len // 4)

    @property
    def scale(self) -> float:
        return self.length_scale or DEFAULT_LENGTH_SCALE.get(self.workload, 1.0)

    @property
    def tenant_count(self) -> int:
        if self.tenants is not None:
            return self.tenants
        return {"multiturn": 0, "fairness": 3}.get(self.workload, 1)

    @property
    def arrival_kind(self) -> str:
        return self.arrivals or ("trace" if self.workload in TRACE_WORKLOADS else "poisson")


def build_workload(spec: WorkloadSpec) -> Workload:
    """The workload of ``spec``; TraceError for a missing or malformed trace file."""
    if spec.workload == "multiturn":
        return _multiturn(spec)
    if spec.workload == "fairness":
        return _fairness(spec)
    return _trace(spec)


@dataclass(slots=True)
class _Lengths:
    """Scales and clips lengths; counts what it changed for the notes."""

    scale: float
    max_model_len: int
    max_prompt: int
    max_output: int
    prompts_clipped: int = 0
    outputs_clipped: int = 0
    turns_dropped: int = 0
    sessions_shortened: int = 0
    extra: list[str] = field(default_factory=list)

    def scaled(self, n: int) -> int:
        return max(1, round(n * self.scale))

    def fit(self, context: int, message: int, output: int) -> tuple[int, int] | None:
        """(message, output) clipped so that context + message <= max_prompt and the whole
        sequence fits max_model_len; None when not even one new token fits."""
        room = self.max_prompt - context
        if room < 1:
            return None
        if message > room:
            message, self.prompts_clipped = room, self.prompts_clipped + 1
        cap = min(self.max_output, self.max_model_len - context - message)
        if output > cap:
            output, self.outputs_clipped = cap, self.outputs_clipped + 1
        return message, output

    def notes(self) -> list[str]:
        out = list(self.extra)
        if self.scale != 1.0:
            out.append(f"lengths scaled by {self.scale:g} (--length-scale)")
        if self.prompts_clipped:
            out.append(
                f"{self.prompts_clipped} prompts clipped to {self.max_prompt} tokens "
                f"(--max-prompt-tokens)"
            )
        if self.outputs_clipped:
            out.append(
                f"{self.outputs_clipped} outputs clipped to <= {self.max_output} tokens or the "
                f"{self.max_model_len}-token context (--max-output-tokens, --max-model-len)"
            )
        if self.sessions_shortened:
            out.append(
                f"{self.sessions_shortened} conversations ended early ({self.turns_dropped} turns "
                f"dropped): the history outgrew --max-prompt-tokens {self.max_prompt}"
            )
        return out


def _lengths(spec: WorkloadSpec) -> _Lengths:
    return _Lengths(spec.scale, spec.max_model_len, spec.prompt_cap, spec.output_cap)


def _tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.choices(range(TOKEN_LO, TOKEN_HI), k=n))


def _multiturn(spec: WorkloadSpec) -> Workload:
    rng = random.Random(f"{spec.seed}:lengths")
    tok_rng = random.Random(f"{spec.seed}:tokens")
    starts = arrival_times(
        spec.arrival_kind,
        rate=spec.rate or DEFAULT_RATE["multiturn"],
        rng=random.Random(f"{spec.seed}:arrivals"),
        limit_s=spec.duration_s,
        max_count=spec.max_requests,
        burstiness=spec.burstiness,
    )
    turns_d, prompt_d, output_d, think_d = (
        parse_dist(t) for t in (spec.turns, spec.prompt_len, spec.output_len, spec.think_time)
    )
    lengths = _lengths(spec)
    n = spec.tenant_count
    sessions: list[Session] = []
    for i, start in enumerate(starts):
        planned = turns_d.sample_int(rng)
        turns: list[Turn] = []
        context = 0
        for k in range(planned):
            message = lengths.scaled(prompt_d.sample_int(rng))
            output = lengths.scaled(output_d.sample_int(rng))
            think = think_d.sample(rng) if k else 0.0
            fitted = lengths.fit(context, message, output)
            if fitted is None:
                lengths.sessions_shortened += 1
                lengths.turns_dropped += planned - k
                break
            message, output = fitted
            turns.append(Turn(_tokens(tok_rng, message), output, think))
            context += message + output
        tenant = f"conv-{i:05d}" if n == 0 else f"tenant-{i % n}"
        sessions.append(Session(f"conv-{i:05d}", tenant, start, tuple(turns)))
    mean_turns = sum(len(s.turns) for s in sessions) / max(1, len(sessions))
    lengths.extra.append(
        f"{len(sessions)} conversations, {mean_turns:.2f} turns each on average "
        f"(turns {turns_d}, message {prompt_d}, reply {output_d}, think {think_d} s)"
    )
    tenants = tuple(dict.fromkeys(s.tenant for s in sessions))
    schedule = _priorities(spec, tenants, lengths)
    return Workload(
        "multiturn",
        tuple(sessions),
        tenants,
        spec.duration_s,
        spec.max_requests,
        tuple(lengths.notes()),
        schedule,
    )


def _fairness(spec: WorkloadSpec) -> Workload:
    n = spec.tenant_count
    names = tuple(f"tenant-{i}" for i in range(n))
    total = spec.rate or DEFAULT_RATE["fairness"]
    weights = [i + 1 for i in range(n)]
    rates = spec.tenant_rates or tuple(total * w / sum(weights) for w in weights)
    prompts = spec.tenant_prompt_lens or tuple(f"const:{64 * (i + 1)}" for i in range(n))
    outputs = spec.tenant_output_lens or tuple(f"const:{32 * (n - i)}" for i in range(n))
    lengths = _lengths(spec)
    tok_rng = random.Random(f"{spec.seed}:tokens")
    arrivals: list[tuple[float, int]] = []
    for i in range(n):
        times = arrival_times(
            spec.arrival_kind,
            rate=rates[i],
            rng=random.Random(f"{spec.seed}:arrivals:{i}"),
            limit_s=spec.duration_s,
            max_count=spec.max_requests,
            burstiness=spec.burstiness,
        )
        arrivals += [(t, i) for t in times]
    arrivals.sort()
    rng = random.Random(f"{spec.seed}:lengths")
    prompt_d = [parse_dist(p) for p in prompts]
    output_d = [parse_dist(o) for o in outputs]
    sessions = []
    for k, (t, i) in enumerate(arrivals[: spec.max_requests]):
        message = lengths.scaled(prompt_d[i].sample_int(rng))
        output = lengths.scaled(output_d[i].sample_int(rng))
        fitted = lengths.fit(0, message, output)
        assert fitted is not None  # prompt_cap >= 1 (validated)
        turn = Turn(_tokens(tok_rng, fitted[0]), fitted[1])
        sessions.append(Session(f"req-{k:05d}", names[i], t, (turn,)))
    lengths.extra.append(
        "tenants: "
        + ", ".join(
            f"{names[i]} {rates[i]:.3g} req/s prompt {prompt_d[i]} output {output_d[i]}"
            for i in range(n)
        )
    )
    return Workload(
        "fairness",
        tuple(sessions),
        names,
        spec.duration_s,
        spec.max_requests,
        tuple(lengths.notes()),
        _priorities(spec, names, lengths),
    )


def _priorities(
    spec: WorkloadSpec, tenants: tuple[str, ...], lengths: _Lengths
) -> PrioritySchedule | None:
    """The tenants' changing priority levels (``--priority-pattern``), noted in the notes."""
    schedule = make_schedule(
        spec.priority_pattern,
        tenants,
        levels=spec.priority_levels,
        interval_s=spec.priority_interval_s,
        duration_s=spec.duration_s,
        stay=spec.markov_stay,
        rng=random.Random(f"{spec.seed}:priorities"),
    )
    if schedule is not None:
        lengths.extra.append(
            f"priorities: {spec.priority_pattern}, {spec.priority_levels} levels, "
            f"changing every {spec.priority_interval_s:g} s"
        )
    return schedule


def _trace(spec: WorkloadSpec) -> Workload:
    path = spec.trace or default_trace(spec.workload)
    mooncake = spec.workload == "mooncake"
    records = read_mooncake(path) if mooncake else read_azure(path)
    lengths = _lengths(spec)
    rows = [r for r in records if r.t_s >= spec.trace_offset_s]
    if spec.arrival_kind == "trace":
        times = [(r.t_s - spec.trace_offset_s) * spec.time_scale for r in rows]
        lengths.extra.append(_trace_note(path, records, spec))
    else:
        span = max(records[-1].t_s - records[0].t_s, 1e-9)
        rate = spec.rate or len(records) / span
        times = arrival_times(
            spec.arrival_kind,
            rate=rate,
            rng=random.Random(f"{spec.seed}:arrivals"),
            limit_s=spec.duration_s,
            max_count=spec.max_requests,
            burstiness=spec.burstiness,
        )
        lengths.extra.append(f"{path.name}: lengths replayed, {spec.arrival_kind} at {rate:g}/s")
    picked = [(t, r) for t, r in zip(times, rows, strict=False) if t < spec.duration_s]
    picked = picked[: spec.max_requests]
    n = spec.tenant_count
    blocks = HashBlockTokens(max(1, round(MOONCAKE_BLOCK_TOKENS * spec.scale)), spec.seed)
    tok_rng = random.Random(f"{spec.seed}:tokens")
    sessions = []
    for k, (t, rec) in enumerate(picked):
        fitted = lengths.fit(0, lengths.scaled(rec.input_len), lengths.scaled(rec.output_len))
        assert fitted is not None  # prompt_cap >= 1 (validated)
        message, output = fitted
        if mooncake:
            ids = tuple(blocks.prompt(rec.hash_ids, message, salt=f"row{k}"))
        else:
            ids = _tokens(tok_rng, message)
        tenant = spec.workload if n == 1 else f"tenant-{k % n}"
        sessions.append(Session(f"req-{k:05d}", tenant, t, (Turn(ids, output),)))
    if mooncake:
        lengths.extra.append(f"hash-id blocks of {blocks.block_tokens} tokens")
    tenants = tuple(dict.fromkeys(s.tenant for s in sessions))
    return Workload(
        spec.workload,
        tuple(sessions),
        tenants,
        spec.duration_s,
        spec.max_requests,
        tuple(lengths.notes()),
    )


def _trace_note(path: Path, records: list[TraceRecord], spec: WorkloadSpec) -> str:
    note = f"{path.name}: {len(records)} requests over {records[-1].t_s:.0f} s, replayed"
    if spec.trace_offset_s:
        note += f" from {spec.trace_offset_s:g} s"
    if spec.time_scale != 1.0:
        note += f" with times x{spec.time_scale:g} (--time-scale)"
    return note
