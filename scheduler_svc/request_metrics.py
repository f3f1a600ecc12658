"""A finished request's metrics as plain data: the one definition of its latencies and counts.

Both the public API (``convert.metrics``: the last chunk's ``RequestMetrics``) and Prometheus
(``metrics.SchedulerMetrics.on_finish``) read a request through ``request_metrics``, so the
client and the dashboards see the same numbers. Times are seconds on the scheduler's clock:

* ``queue_s``: arrival -> first scheduled (None: never scheduled);
* ``ttft_s``: arrival -> first token (None: no token);
* ``tbt_s``: the gaps between consecutive tokens (inter-token latency);
* ``e2e_s``: arrival -> finished (None: not finished).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from scheduler_svc.request import Request


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int  # prompt tokens whose KV was reused: host arena or device tier
    device_cached_tokens: int  # the part of them shared from the worker's cached blocks
    preemptions: int
    swap_outs: int
    swap_ins: int
    recomputes: int
    queue_s: float | None
    ttft_s: float | None
    tbt_s: tuple[float, ...]
    e2e_s: float | None


def request_metrics(req: Request) -> RequestMetrics:
    times = req.token_times
    return RequestMetrics(
        prompt_tokens=len(req.prompt_ids),
        output_tokens=len(req.output_ids),
        cached_prompt_tokens=req.cached_prompt_tokens,
        device_cached_tokens=req.device_cached_tokens,
        preemptions=req.preemptions,
        swap_outs=req.swap_outs,
        swap_ins=req.swap_ins,
        recomputes=req.recomputes,
        queue_s=None if req.first_scheduled_s is None else req.first_scheduled_s - req.arrival_s,
        ttft_s=times[0] - req.arrival_s if times else None,
        tbt_s=tuple(b - a for a, b in itertools.pairwise(times)),
        e2e_s=None if req.finished_s is None else req.finished_s - req.arrival_s,
    )
