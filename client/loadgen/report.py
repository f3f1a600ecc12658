"""The plain-text table and the JSON document of a run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.loadgen.runner import RunResult
from client.loadgen.stats import Percentiles, RequestRecord
from client.loadgen.summary import ServerDelta, Summary
from client.loadgen.workloads import Workload

MAX_TENANT_ROWS = 16


def _ms(v: float | None, width: int = 10) -> str:
    return f"{'-' if v is None else f'{v * 1e3:.1f}':>{width}}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _latency_row(label: str, p: Percentiles) -> str:
    cells = "".join(_ms(v) for v in (p.p50, p.p95, p.p99, p.p999, p.mean))
    return f"  {label:<14}{cells}{p.count:>10}"


def format_table(
    s: Summary, *, workload: Workload, run: RunResult, target: str, title: str = ""
) -> str:
    """The final report of one run."""
    srv = s.server
    n = len(srv.workers) if srv else 0
    door = "HTTP door, " if run.kind == "http" else ""
    where = (
        f"{door}policy {srv.policy}, mode {srv.mode}, {n} worker{'s' * (n != 1)}"
        if srv
        else f"{door}server's stats not collected"
    )
    lines = [
        title or f"fastswitch-bench: {workload.name} against {target} ({where})",
        *(f"  note: {n}" for n in (*workload.notes, *run.notes)),
    ]
    if run.stopped:
        lines.append(f"  STOPPED EARLY: {run.stopped}")
    lines += [
        f"  {s.wall_s:.1f} s: {s.issued} requests issued, {s.finished} finished, "
        f"{s.failed} failed, {s.cancelled} cancelled unfinished",
        "",
        f"  {'latency (ms)':<14}{'P50':>10}{'P95':>10}{'P99':>10}{'P99.9':>10}{'mean':>10}"
        f"{'samples':>10}",
        _latency_row("TTFT", s.ttft),
        _latency_row("TBT", s.tbt),
        _latency_row("E2E", s.e2e),
        _latency_row("client wait", s.client_wait),
        "",
        f"  throughput: {s.requests_per_s:.2f} req/s, {s.output_tokens_per_s:.0f} output tok/s, "
        f"{s.total_tokens_per_s:.0f} tok/s prompt+output "
        f"({s.prompt_tokens} prompt, {s.output_tokens} output tokens)",
    ]
    if s.attainment is not None:
        a, slo = s.attainment, s.slo
        rule = " and ".join(
            part
            for part in (
                None if slo.ttft_s is None else f"TTFT <= {slo.ttft_s * 1e3:g} ms",
                None if slo.tbt_s is None else f"mean TBT <= {slo.tbt_s * 1e3:g} ms",
            )
            if part
        )
        lines.append(
            f"  SLO ({rule}): {_pct(a.both)} of {a.requests} requests "
            f"(TTFT {_pct(a.ttft)}, TBT {_pct(a.tbt)}; token gaps within TBT "
            f"{_pct(a.tokens_within_tbt)})"
        )
    lines += ["", *_tenant_rows(s)]
    if srv is not None:
        lines += [
            "",
            f"  scheduler: {srv.preemptions} preemptions, {srv.swap_outs} swap-outs, "
            f"{srv.swap_ins} swap-ins, {srv.recomputes} recomputes; swapped "
            f"{_mib(srv.swap_out_bytes)} out, {_mib(srv.swap_in_bytes)} in",
            _reuse_line(s, srv),
        ]
        lines += [
            f"  {w.worker_id}: {w.device}, {w.steps} steps, mean step "
            f"{w.mean_step_s * 1e3:.1f} ms, swapped {_mib(w.swap_out_bytes)} out, "
            f"{_mib(w.swap_in_bytes)} in"
            for w in srv.workers
        ]
    elif s.cached_prompt_tokens is not None:
        lines.append(
            f"  KV reuse: {s.cached_prompt_tokens} prompt tokens served from cached KV, as the "
            f"server's usage of {s.usage_requests} requests counts them"
        )
    if run.stats_error:
        lines.append(f"  {run.stats_error}")
    lines += [
        f"  failures: {code} x{n} (first: {s.error_examples.get(code, '?')[:160]})"
        for code, n in sorted(s.errors.items())
    ]
    return "\n".join(lines)


def _reuse_line(s: Summary, srv: ServerDelta) -> str:
    """The two kinds of KV reuse, each named for what it counts: prompt tokens a turn took from
    retained KV (the server's counter, and the requests' own metrics), and swap-out bytes not
    copied again because the host still held those blocks from an earlier swap-out."""
    if srv.reuse_hit_tokens or srv.retained_lookups or s.cached_prompt_tokens:
        retained = (
            f"{srv.reuse_hit_tokens} prompt tokens taken from retained KV "
            f"({srv.retained_hit_blocks} blocks hit in {srv.retained_lookups} lookups; "
            f"{_count(s.cached_prompt_tokens)} cached prompt tokens in the requests' metrics)"
        )
    else:
        retained = "no prompt tokens taken from retained KV (no retained-KV lookups)"
    if srv.offloaded_blocks:
        retained += f", {srv.offloaded_blocks} blocks offloaded at finish to be retained"
    resumed = (
        f"{_mib(srv.swap_bytes_avoided)} of swap-out not copied (blocks the host already held "
        "from an earlier swap-out)"
        if srv.swap_bytes_avoided
        else "no swap-out skipped"
    )
    return f"  KV reuse: {retained}; {resumed}"


def _tenant_rows(s: Summary) -> list[str]:
    rows = [
        f"  {'tenant':<12}{'reqs':>6}{'done':>6}{'failed':>7}{'prompt tok':>11}"
        f"{'output tok':>11}{'service':>10}{'TTFT P50':>10}{'TTFT P99':>10}{'VTC ctr':>10}"
    ]
    shown = sorted(s.tenants, key=lambda t: -t.service)[:MAX_TENANT_ROWS]
    for t in sorted(shown, key=lambda t: t.tenant):
        ctr = "-" if t.virtual_counter is None else f"{t.virtual_counter:.0f}"
        rows.append(
            f"  {t.tenant[:12]:<12}{t.requests:>6}{t.finished:>6}{t.failed:>7}"
            f"{t.prompt_tokens:>11}{t.output_tokens:>11}{t.service:>10.0f}"
            f"{_ms(t.ttft_p50_s)}{_ms(t.ttft_p99_s)}{ctr:>10}"
        )
    if len(s.tenants) > len(shown):
        rows.append(f"  ... {len(s.tenants) - len(shown)} more tenants in the JSON")
    if s.jain is not None:
        rows.append(
            f"  Jain's fairness index {s.jain:.3f} over {len(s.tenants)} tenants, max service "
            f"gap {s.max_service_gap:.0f}: service (prompt + 2 x output tokens) received in the "
            f"first {s.fairness_window_s:.1f} s"
        )
    return rows


def record_json(r: RequestRecord) -> dict[str, Any]:
    gaps = r.tbt_s
    m = r.server
    return {
        "request_id": r.request_id,
        "session": r.session_id,
        "tenant": r.tenant,
        "turn": r.turn,
        "priority": r.priority,
        "status": str(r.status),
        "error": r.error,
        "scheduled_s": r.scheduled_s,
        "issued_s": r.issued_s,
        "sent_s": r.sent_s,
        "end_s": r.end_s,
        "prompt_tokens": r.prompt_tokens,
        "max_tokens": r.max_tokens,
        "output_tokens": r.output_tokens,
        "ttft_s": r.ttft_s,
        "tbt_mean_s": sum(gaps) / len(gaps) if gaps else None,
        "tbt_max_s": max(gaps) if gaps else None,
        "e2e_s": r.e2e_s,
        "server": None if m is None else {k: v for k, v in _asdict(m).items() if k != "tbt_s"},
        "usage": None if r.usage is None else _asdict(r.usage),
    }


def run_json(
    s: Summary, *, workload: Workload, run: RunResult, params: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "params": dict(params),
        "workload": {
            "name": workload.name,
            "notes": list(workload.notes),
            "tenants": list(workload.tenants),
            "planned_requests": workload.planned_requests,
        },
        "run": {
            "door": run.kind,
            "stopped": run.stopped,
            "notes": list(run.notes),
            "stats_error": run.stats_error,
        },
        "summary": _asdict(s),
        "requests": [record_json(r) for r in run.records],
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
