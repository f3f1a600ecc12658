"""The arithmetic of a benchmark: per-request records, percentiles, SLO attainment, per-tenant
service and Jain's fairness index. Plain code: no server, no clock.

Times in a :class:`RequestRecord` are seconds since the run's start. TTFT and end-to-end latency
count from the request's *scheduled* arrival, so time the load generator lost -- issuing late, or
waiting for a client-side concurrency slot -- is included (an open-loop benchmark must not hide
its own backlog)::

    scheduled_s --lag_s--> issued_s --queued_s--> sent_s --> token_times ... end_s
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from client import RequestMetrics

QUANTILES = (50.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True, slots=True)
class ServerUsage:
    """A request's prompt as the server counted it: its tokens, and those it took from cached
    (retained) KV instead of prefilling them (None: the server did not say)."""

    prompt_tokens: int
    cached_prompt_tokens: int | None


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"  # the server (or the connection) failed the request
    CANCELLED = "cancelled"  # still running when the run ended (drain timeout, Ctrl-C, abort)


@dataclass(slots=True)
class RequestRecord:
    """One request as the load generator saw it; filled in while it runs."""

    request_id: str
    session_id: str
    tenant: str
    turn: int
    priority: int
    scheduled_s: float
    prompt_tokens: int
    max_tokens: int
    issued_s: float | None = None  # the runner got to it (None: the record predates it)
    sent_s: float | None = None
    token_times: list[float] = field(default_factory=list)
    end_s: float | None = None
    status: Status = Status.CANCELLED
    error: str | None = None
    server: RequestMetrics | None = None  # the scheduler's own timings (gRPC only)
    usage: ServerUsage | None = None  # the server's token counts (both doors)

    @property
    def output_tokens(self) -> int:
        return len(self.token_times)

    @property
    def ttft_s(self) -> float | None:
        return self.token_times[0] - self.scheduled_s if self.token_times else None

    @property
    def tbt_s(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def e2e_s(self) -> float | None:
        ok = self.status is Status.OK and self.end_s is not None
        return self.end_s - self.scheduled_s if ok and self.end_s is not None else None

    @property
    def wait_s(self) -> float | None:
        """Scheduled arrival -> call made: ``lag_s + queued_s``."""
        return None if self.sent_s is None else self.sent_s - self.scheduled_s

    @property
    def lag_s(self) -> float:
        """How late the runner issued it (0 when on time)."""
        return 0.0 if self.issued_s is None else max(0.0, self.issued_s - self.scheduled_s)

    @property
    def queued_s(self) -> float | None:
        """Time spent waiting in the client for a concurrency slot: until it was sent, or
        until the run ended it still waiting (None: not known yet)."""
        until = self.sent_s if self.sent_s is not None else self.end_s
        if until is None or self.issued_s is None:
            return None
        return until - self.issued_s

    def add_tokens(self, n: int, now: float) -> None:
        """n tokens arrived at ``now``: a chunk's gap is shared evenly among its tokens."""
        if n <= 0:
            return
        if not self.token_times:
            self.token_times.extend([now] * n)
            return
        last = self.token_times[-1]
        self.token_times.extend(last + (now - last) * (k + 1) / n for k in range(n))


class Overdue(NamedTuple):
    """Requests past a threshold and the longest of their delays (seconds; 0 when none)."""

    requests: int
    longest_s: float


def late(records: Iterable[RequestRecord], threshold_s: float) -> Overdue:
    """Requests issued more than ``threshold_s`` after their scheduled arrival."""
    return _overdue([r.lag_s for r in records], threshold_s)


def queued(records: Iterable[RequestRecord], threshold_s: float) -> Overdue:
    """Requests that waited more than ``threshold_s`` in the client for a slot."""
    return _overdue([q for r in records if (q := r.queued_s) is not None], threshold_s)


def _overdue(delays: Sequence[float], threshold_s: float) -> Overdue:
    over = [d for d in delays if d > threshold_s]
    return Overdue(len(over), max(over, default=0.0))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between closest ranks (numpy's
    default); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n * sum x^2): 1 when all are equal, 1/n when one
    gets everything. None for no values or when all are zero."""
    if any(v < 0 for v in values):
        raise ValueError("Jain's index is defined for values >= 0")
    square_sum = sum(v * v for v in values)
    if not values or square_sum == 0:
        return None
    return sum(values) ** 2 / (len(values) * square_sum)


@dataclass(frozen=True, slots=True)
class Percentiles:
    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    p999: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        mean = sum(values) / len(values) if values else None
        p50, p95, p99, p999 = (percentile(values, q) for q in QUANTILES)
        return cls(len(values), mean, p50, p95, p99, p999)


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float | None = None
    tbt_s: float | None = None  # on each request's mean time between tokens (TPOT)


@dataclass(frozen=True, slots=True)
class SloAttainment:
    """Fractions of the requests whose outcome is known (a failed request misses; one cancelled
    by the run's end misses only if it had already waited past the SLO)."""

    ttft: float | None
    tbt: float | None
    both: float | None
    requests: int
    tokens_within_tbt: float | None  # fraction of all token gaps <= the TBT SLO


def slo_attainment(records: Sequence[RequestRecord], slo: Slo) -> SloAttainment:
    ttft = [_ttft_met(r, slo.ttft_s) for r in records] if slo.ttft_s is not None else []
    tbt = [_tbt_met(r, slo.tbt_s) for r in records] if slo.tbt_s is not None else []
    both: list[bool | None] = []
    for k in range(len(records)):
        parts = [p[k] for p in (ttft, tbt) if p]
        both.append(False if False in parts else None if None in parts else True)
    gaps = [g for r in records for g in r.tbt_s]
    within = None
    if slo.tbt_s is not None and gaps:
        within = sum(g <= slo.tbt_s for g in gaps) / len(gaps)
    return SloAttainment(
        _fraction(ttft), _fraction(tbt), _fraction(both), sum(b is not None for b in both), within
    )


def _ttft_met(r: RequestRecord, slo: float | None) -> bool | None:
    assert slo is not None
    if r.ttft_s is not None:
        return r.ttft_s <= slo
    if r.status is Status.FAILED:
        return False
    waited = None if r.end_s is None else r.end_s - r.scheduled_s
    return False if waited is not None and waited > slo else None


def _tbt_met(r: RequestRecord, slo: float | None) -> bool | None:
    assert slo is not None
    gaps = r.tbt_s
    if r.status is Status.FAILED:
        return False
    if gaps:
        return sum(gaps) / len(gaps) <= slo
    return True if r.status is Status.OK else None


def _fraction(flags: Iterable[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


@dataclass(frozen=True, slots=True)
class Weights:
    """VTC's service weights: prompt tokens count 1, output tokens 2."""

    prompt: float = 1.0
    output: float = 2.0


def service(r: RequestRecord, w: Weights, until_s: float | None = None) -> float:
    """Weighted tokens a request received (by ``until_s`` if given): its prompt counts once its
    first token came back, each output token when it came back."""
    times = r.token_times
    if until_s is not None:
        times = [t for t in times if t <= until_s]
    if not times:
        return 0.0
    return w.prompt * r.prompt_tokens + w.output * len(times)


@dataclass(frozen=True, slots=True)
class ServiceTimeline:
    """Service rate (weighted tokens/s) of each tenant in consecutive bins of ``bin_s``."""

    bin_s: float
    tenants: dict[str, list[float]]


def service_timeline(
    records: Sequence[RequestRecord], tenants: Sequence[str], end_s: float, w: Weights
) -> ServiceTimeline:
    bins = max(1, min(200, math.ceil(end_s)))
    bin_s = max(end_s, 1e-9) / bins
    out = {t: [0.0] * bins for t in tenants}
    for r in records:
        row = out.setdefault(r.tenant, [0.0] * bins)
        for k, t in enumerate(r.token_times):
            credit = w.output + (w.prompt * r.prompt_tokens if k == 0 else 0.0)
            row[min(bins - 1, max(0, int(t / bin_s)))] += credit / bin_s
    return ServiceTimeline(bin_s, out)
