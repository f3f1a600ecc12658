"""A run's figures, computed once from its records and the scheduler's stats before and after.

Everything here is plain data (JSON-ready through ``dataclasses.asdict``); the table, the JSON
file and ``compare`` all read the same :class:`Summary`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from client import Stats, TenantStats
from client.loadgen.stats import (
    Percentiles,
    RequestRecord,
    ServerUsage,
    ServiceTimeline,
    Slo,
    SloAttainment,
    Status,
    Weights,
    jain_index,
    late,
    percentile,
    queued,
    service,
    service_timeline,
    slo_attainment,
)


@dataclass(frozen=True, slots=True)
class TenantSummary:
    tenant: str
    requests: int
    finished: int
    failed: int
    prompt_tokens: int  # of requests that got at least one token
    output_tokens: int
    service: float  # weighted tokens (client view)
    window_service: float  # the same, received during the fairness window
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    server_prompt_tokens: int | None  # the scheduler's tallies over the run (None: no stats)
    server_output_tokens: int | None
    virtual_counter: float | None  # VTC counter at the end of the run


@dataclass(frozen=True, slots=True)
class WorkerDelta:
    worker_id: str
    device: str
    steps: int
    mean_step_s: float
    swap_out_bytes: int
    swap_in_bytes: int


@dataclass(frozen=True, slots=True)
class ServerDelta:
    """The scheduler's counters over the run (after minus before)."""

    policy: str
    mode: str
    finished: int
    failed: int
    cancelled: int
    preemptions: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    swap_out_bytes: int
    swap_in_bytes: int
    reuse_hit_tokens: int  # prompt tokens taken from retained KV (conversation turns)
    swap_bytes_avoided: int  # swap-out bytes not copied: the host already held those blocks
    retained_lookups: int  # prompts looked up in the retained KV
    retained_hit_blocks: int
    offloaded_blocks: int  # blocks copied out at a request's finish, to be retained
    workers: tuple[WorkerDelta, ...]


_COUNTERS = (
    "finished",
    "failed",
    "cancelled",
    "preemptions",
    "swap_outs",
    "swap_ins",
    "recomputes",
    "swap_out_bytes",
    "swap_in_bytes",
    "reuse_hit_tokens",
    "swap_bytes_avoided",
    "retained_lookups",
    "retained_hit_blocks",
    "offloaded_blocks",
)


def server_delta(before: Stats, after: Stats) -> ServerDelta:
    counts = {k: getattr(after, k) - getattr(before, k) for k in _COUNTERS}
    old = {w.worker_id: w for w in before.workers}
    workers = []
    for w in after.workers:
        b = old.get(w.worker_id)
        workers.append(
            WorkerDelta(
                w.worker_id,
                w.device,
                w.steps - (b.steps if b else 0),
                w.mean_step_s,
                w.swap_out_bytes - (b.swap_out_bytes if b else 0),
                w.swap_in_bytes - (b.swap_in_bytes if b else 0),
            )
        )
    return ServerDelta(after.policy, after.mode, **counts, workers=tuple(workers))


@dataclass(frozen=True, slots=True)
class Summary:
    wall_s: float
    issued: int
    finished: int
    failed: int
    cancelled: int
    errors: dict[str, int]  # status code of the failure -> count
    error_examples: dict[str, str]  # status code -> the first message
    ttft: Percentiles  # client, from the scheduled arrival
    tbt: Percentiles  # client, every gap between consecutive tokens
    e2e: Percentiles
    client_wait: Percentiles  # scheduled arrival -> call made (issued late + queued)
    behind_schedule: int  # requests issued more than warn_after_s after their arrival
    max_lag_s: float
    client_queued: int  # requests that waited more than warn_after_s for a client slot
    max_client_queue_s: float
    server_ttft: Percentiles
    server_tbt: Percentiles
    server_queue: Percentiles
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int | None  # prompt tokens the server took from retained KV
    usage_requests: int  # finished requests whose token counts the server reported
    slo: Slo
    attainment: SloAttainment | None
    tenants: tuple[TenantSummary, ...]
    fairness_window_s: float  # Jain's index and the gap count the service received by then
    jain: float | None
    max_service_gap: float | None  # max - min tenant service (VTC's bound is on this)
    server: ServerDelta | None
    timeline: ServiceTimeline


def summarize(
    records: Sequence[RequestRecord],
    *,
    wall_s: float,
    tenants: Sequence[str],
    slo: Slo = Slo(),  # noqa: B008 -- frozen
    weights: Weights = Weights(),  # noqa: B008 -- frozen
    before: Stats | None = None,
    after: Stats | None = None,
    fairness_window_s: float | None = None,
    warn_after_s: float = 0.05,
) -> Summary:
    """The figures of a run. Fairness is judged on the service received by
    ``fairness_window_s`` (normally the end of arrivals: after it, tenants stop being
    backlogged one by one); the whole run when None."""
    ok = [r for r in records if r.status is Status.OK]
    failed = [r for r in records if r.status is Status.FAILED]
    got = [r for r in records if r.token_times]
    metrics = [r.server for r in ok if r.server is not None]
    usage = [u for r in ok if (u := _usage(r)) is not None]
    cached = [n for u in usage if (n := u.cached_prompt_tokens) is not None]
    prompt = sum(r.prompt_tokens for r in got)
    output = sum(r.output_tokens for r in records)
    wall = max(wall_s, 1e-9)
    names = list(dict.fromkeys([*tenants, *(r.tenant for r in records)]))
    window = wall_s if fairness_window_s is None else min(wall_s, fairness_window_s)
    per_tenant = _tenants(records, names, weights, window, before, after)
    services = [t.window_service for t in per_tenant]
    attainment = None if slo.ttft_s is None and slo.tbt_s is None else slo_attainment(records, slo)
    behind, waited = late(records, warn_after_s), queued(records, warn_after_s)
    return Summary(
        wall_s=wall_s,
        issued=len(records),
        finished=len(ok),
        failed=len(failed),
        cancelled=sum(r.status is Status.CANCELLED for r in records),
        errors=dict(Counter(_code(r.error) for r in failed)),
        error_examples={_code(msg): msg for r in reversed(failed) if (msg := r.error)},
        ttft=Percentiles.of([t for r in records if (t := r.ttft_s) is not None]),
        tbt=Percentiles.of([g for r in records for g in r.tbt_s]),
        e2e=Percentiles.of([e for r in ok if (e := r.e2e_s) is not None]),
        client_wait=Percentiles.of([w for r in records if (w := r.wait_s) is not None]),
        behind_schedule=behind.requests,
        max_lag_s=behind.longest_s,
        client_queued=waited.requests,
        max_client_queue_s=waited.longest_s,
        server_ttft=Percentiles.of([m.ttft_s for m in metrics]),
        server_tbt=Percentiles.of([g for m in metrics for g in m.tbt_s]),
        server_queue=Percentiles.of([m.queue_s for m in metrics]),
        requests_per_s=len(ok) / wall,
        output_tokens_per_s=output / wall,
        total_tokens_per_s=(prompt + output) / wall,
        prompt_tokens=prompt,
        output_tokens=output,
        cached_prompt_tokens=sum(cached) if cached else None,
        usage_requests=len(usage),
        slo=slo,
        attainment=attainment,
        tenants=tuple(per_tenant),
        fairness_window_s=window,
        jain=jain_index(services) if len(services) > 1 else None,
        max_service_gap=max(services) - min(services) if len(services) > 1 else None,
        server=server_delta(before, after) if before and after else None,
        timeline=service_timeline(records, names, wall_s, weights),
    )


def _usage(r: RequestRecord) -> ServerUsage | None:
    """The server's token counts of a request: as it reported them, else from its metrics."""
    if r.usage is not None or r.server is None:
        return r.usage
    return ServerUsage(r.server.prompt_tokens, r.server.cached_prompt_tokens)


def _code(error: str | None) -> str:
    return (error or "UNKNOWN").split(":", 1)[0]


def _tenants(
    records: Sequence[RequestRecord],
    names: Sequence[str],
    w: Weights,
    window_s: float,
    before: Stats | None,
    after: Stats | None,
) -> list[TenantSummary]:
    out = []
    for name in names:
        mine = [r for r in records if r.tenant == name]
        ttfts = [t for r in mine if (t := r.ttft_s) is not None]
        b = before.tenant(name) if before else None
        a = after.tenant(name) if after else None
        out.append(
            TenantSummary(
                tenant=name,
                requests=len(mine),
                finished=sum(r.status is Status.OK for r in mine),
                failed=sum(r.status is Status.FAILED for r in mine),
                prompt_tokens=sum(r.prompt_tokens for r in mine if r.token_times),
                output_tokens=sum(r.output_tokens for r in mine),
                service=sum(service(r, w) for r in mine),
                window_service=sum(service(r, w, window_s) for r in mine),
                ttft_p50_s=percentile(ttfts, 50),
                ttft_p99_s=percentile(ttfts, 99),
                server_prompt_tokens=_delta(a, b, "prompt_tokens"),
                server_output_tokens=_delta(a, b, "output_tokens"),
                virtual_counter=None if a is None else a.virtual_counter,
            )
        )
    return out


def _delta(a: TenantStats | None, b: TenantStats | None, name: str) -> int | None:
    if a is None:
        return None
    return int(getattr(a, name)) - (int(getattr(b, name)) if b else 0)


#: The figures ``compare`` puts side by side: key, label, unit, which direction is better.
HEADLINE = (
    ("ttft_p50", "TTFT P50", "ms", "lower"),
    ("ttft_p95", "TTFT P95", "ms", "lower"),
    ("ttft_p99", "TTFT P99", "ms", "lower"),
    ("ttft_p999", "TTFT P99.9", "ms", "lower"),
    ("tbt_p50", "TBT P50", "ms", "lower"),
    ("tbt_p95", "TBT P95", "ms", "lower"),
    ("tbt_p99", "TBT P99", "ms", "lower"),
    ("tbt_p999", "TBT P99.9", "ms", "lower"),
    ("e2e_p50", "E2E P50", "ms", "lower"),
    ("e2e_p95", "E2E P95", "ms", "lower"),
    ("e2e_p99", "E2E P99", "ms", "lower"),
    ("e2e_p999", "E2E P99.9", "ms", "lower"),
    ("requests_per_s", "throughput", "req/s", "higher"),
    ("output_tokens_per_s", "output tokens/s", "tok/s", "higher"),
    ("slo_both", "SLO attainment", "%", "higher"),
    ("jain", "Jain's index", "", "higher"),
    ("finished", "finished", "", None),
    ("failed", "failed", "", None),
    ("cancelled", "cancelled at the end", "", None),
    ("preemptions", "preemptions", "", None),
    ("swap_mib", "swapped out+in", "MiB", None),
    ("reuse_hit_tokens", "reused KV tokens", "", None),
)


def headline(s: Summary) -> dict[str, float | None]:
    """The HEADLINE figures of one run (ms for latencies, % for attainment)."""
    out: dict[str, float | None] = {}
    for name, pct in (("ttft", s.ttft), ("tbt", s.tbt), ("e2e", s.e2e)):
        for q in ("p50", "p95", "p99", "p999"):
            v = getattr(pct, q)
            out[f"{name}_{q}"] = None if v is None else v * 1e3
    out["requests_per_s"] = s.requests_per_s
    out["output_tokens_per_s"] = s.output_tokens_per_s
    both = s.attainment.both if s.attainment else None
    out["slo_both"] = None if both is None else both * 100
    out["jain"] = s.jain
    out["finished"] = float(s.finished)
    out["failed"] = float(s.failed)
    out["cancelled"] = float(s.cancelled)
    srv = s.server
    out["preemptions"] = None if srv is None else float(srv.preemptions)
    out["swap_mib"] = None if srv is None else (srv.swap_out_bytes + srv.swap_in_bytes) / 2**20
    out["reuse_hit_tokens"] = None if srv is None else float(srv.reuse_hit_tokens)
    return out
