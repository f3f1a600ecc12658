"""Priorities that change over time, per tenant (the FastSwitch paper's dynamic-priority runs).

``random``  every interval each tenant draws a level uniformly from 0..levels-1.
``markov``  each tenant starts at a uniform level; every interval it keeps its level with
            probability ``stay`` and otherwise moves one level up or down (reflecting at the ends).

Higher levels run first under the server's ``priority`` policy.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PATTERNS = ("none", "random", "markov")


@dataclass(frozen=True, slots=True)
class PrioritySchedule:
    """Each tenant's level in each interval ``[k*interval_s, (k+1)*interval_s)``."""

    interval_s: float
    levels: Mapping[str, tuple[int, ...]]

    def at(self, tenant: str, t_s: float) -> int:
        """The tenant's level at time t_s (0 for a tenant the schedule does not know)."""
        row = self.levels.get(tenant)
        if not row:
            return 0
        k = min(max(0, int(t_s // self.interval_s)), len(row) - 1)
        return row[k]

    def changes(self) -> list[tuple[float, str, int]]:
        """(time, tenant, new level) of every change after time 0, in time order."""
        out = [
            (k * self.interval_s, tenant, row[k])
            for tenant, row in self.levels.items()
            for k in range(1, len(row))
            if row[k] != row[k - 1]
        ]
        return sorted(out)


def make_schedule(
    pattern: str,
    tenants: Sequence[str],
    *,
    levels: int,
    interval_s: float,
    duration_s: float,
    stay: float,
    rng: random.Random,
) -> PrioritySchedule | None:
    """A schedule for ``pattern`` (None for ``none``)."""
    if pattern not in PATTERNS:
        raise ValueError(f"priority pattern must be one of {', '.join(PATTERNS)}, got {pattern!r}")
    if pattern == "none":
        return None
    if levels < 2:
        raise ValueError(f"priority levels must be >= 2, got {levels}")
    if interval_s <= 0:
        raise ValueError(f"priority interval must be > 0, got {interval_s}")
    if not 0 <= stay <= 1:
        raise ValueError(f"markov stay probability must be in [0, 1], got {stay}")
    steps = max(1, math.ceil(duration_s / interval_s))
    table: dict[str, tuple[int, ...]] = {}
    for tenant in tenants:
        row = [rng.randrange(levels)]
        for _ in range(steps - 1):
            if pattern == "random":
                row.append(rng.randrange(levels))
            elif rng.random() < stay:
                row.append(row[-1])
            else:
                step = rng.choice((-1, 1))
                nxt = row[-1] + step
                row.append(nxt if 0 <= nxt < levels else row[-1] - step)
        table[tenant] = tuple(row)
    return PrioritySchedule(interval_s, table)
