"""Arrival processes: when each request (or conversation) of a workload starts.

``poisson``  exponential gaps at ``rate`` per second.
``gamma``    gamma gaps with the same mean and coefficient of variation ``burstiness``
             (1 is Poisson; above 1 arrivals come in bursts, below 1 more evenly).
``trace``    the trace's own timestamps (see :mod:`client.loadgen.workloads`).
"""

from __future__ import annotations

import random

ARRIVALS = ("poisson", "gamma", "trace")


def arrival_times(
    kind: str,
    *,
    rate: float,
    rng: random.Random,
    limit_s: float,
    max_count: int,
    burstiness: float = 1.0,
) -> list[float]:
    """Arrival times in [0, limit_s), at most ``max_count`` of them, from a synthetic process."""
    if kind not in ("poisson", "gamma"):
        raise ValueError(f"synthetic arrivals are poisson or gamma, got {kind!r}")
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    shape = 1.0 / (burstiness * burstiness)
    times: list[float] = []
    t = 0.0
    while len(times) < max_count:
        if kind == "poisson":
            t += rng.expovariate(rate)
        else:
            t += rng.gammavariate(shape, 1.0 / (rate * shape))
        if t >= limit_s:
            break
        times.append(t)
    return times
