"""``fastswitch-bench --wait-workers N``: wait until the scheduler lists N joined workers.

The bench then starts whatever the worker count of a deployment is and however its workers
come up (a compose stack's `bench` service depends on the scheduler's health only). The wait
polls ``GetStats`` and ends as soon as ``len(stats.workers) >= N``; until the deadline an
unreachable or not yet serving scheduler is polled again, since it may be starting too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from client.aio import AsyncClient
from client.errors import FastSwitchError
from client.loadgen.runner import TargetError

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
    async with AsyncClient(target, timeout_s=CALL_S, api_key=api_key) as api:
        while True:
            left = deadline - time.monotonic()
            try:
                stats = await api.stats(timeout_s=max(0.1, min(CALL_S, left)))
            except FastSwitchError as err:
                last_error = f"{type(err).__name__}: {err}"
            else:
                joined, last_error = len(stats.workers), ""
                if joined >= want:
                    return joined
            if on_wait is not None and joined != reported:
                on_wait(joined)
                reported = joined
            if time.monotonic() + interval_s > deadline:
                break
            await asyncio.sleep(interval_s)
    why = f"; last GetStats: {last_error}" if last_error else ""
    raise TargetError(
        f"--wait-workers {want}: {joined} of {want} workers joined {target} "
        f"within --wait-timeout {timeout_s:g}s{why}"
    )
