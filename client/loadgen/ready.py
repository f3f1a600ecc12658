"""``fastswitch-bench --wait-workers N``: wait until the scheduler lists N joined workers.

The bench then starts whatever the worker count of a deployment is and however its workers
come up (a compose stack's `bench` service depends on the scheduler's health only). The wait
polls ``GetStats`` (an ``http://`` target: the door's ``GET /health``, which counts the workers)
and ends as soon as N have joined; until the deadline an unreachable or not yet serving
scheduler is polled again, since it may be starting too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from client.loadgen.transport import RequestFailed, TargetError, is_http, open_transport

POLL_S = 0.5  # between two GetStats
CALL_S = 5.0  # deadline of one GetStats


async def wait_for_workers(
    target: str,
    want: int,
    timeout_s: float,
    *,
    interval_s: float = POLL_S,
    on_wait: Callable[[int], None] | None = None,
    api_key: str | None = None,
    tls_ca: str | None = None,
) -> int:
    """Returns the number of workers joined (``>= want``) once the scheduler at ``target``
    lists that many. ``TargetError`` (one line: how many joined, the last error) when it does
    not within ``timeout_s``; ``on_wait(joined)`` is called whenever that number changes."""
    if want < 1:
        raise ValueError(f"--wait-workers must be >= 1, got {want}")
    if not timeout_s > 0:
        raise ValueError(f"--wait-timeout must be > 0, got {timeout_s}")
    deadline = time.monotonic() + timeout_s
    joined, last_error, reported = 0, "", -1
    probe = "GET /health" if is_http(target) else "GetStats"
    async with open_transport(target, timeout_s=CALL_S, api_key=api_key, tls_ca=tls_ca) as api:
        while True:
            left = deadline - time.monotonic()
            try:
                n = await api.workers(timeout_s=max(0.1, min(CALL_S, left)))
            except RequestFailed as err:
                last_error = str(err)
            else:
                joined, last_error = n, ""
                if joined >= want:
                    return joined
            if on_wait is not None and joined != reported:
                on_wait(joined)
                reported = joined
            if time.monotonic() + interval_s > deadline:
                break
            await asyncio.sleep(interval_s)
    why = f"; last {probe}: {last_error}" if last_error else ""
    raise TargetError(
        f"--wait-workers {want}: {joined} of {want} workers joined {target} "
        f"within --wait-timeout {timeout_s:g}s{why}"
    )
