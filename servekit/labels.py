"""Bounded Prometheus label values for client-chosen strings (tenants).

Every distinct label value is a time series in Prometheus, so a label fed by clients must be
capped. ``BoundedLabels`` hands out at most ``cap`` distinct values, first come first served
(values named up front are always their own); every later value is reported as ``OTHER``.
The assignment never changes for the life of the process, so a series never changes meaning.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

OTHER = "_other"
DEFAULT_MAX_TENANTS = 64


class BoundedLabels:
    """Maps values to label values: a value keeps its own label while fewer than ``cap`` have
    one, else it becomes ``OTHER``. Thread-safe (a collector may read it on the metrics HTTP
    thread while the event loop adds to it). Invariant: ``len(named()) <= max(cap, len(seed))``
    and a value's label never changes."""

    def __init__(self, cap: int = DEFAULT_MAX_TENANTS, *, seed: Iterable[str] = ()) -> None:
        if cap < 0:
            raise ValueError(f"the label cap must be >= 0, got {cap}")
        self.cap = cap
        self._lock = threading.Lock()
        self._named: dict[str, None] = dict.fromkeys(seed)  # insertion-ordered set
        self._snapshot: tuple[str, ...] = tuple(self._named)

    def label(self, value: str) -> str:
        """``value`` itself if it has (or now gets) its own label, else ``OTHER``."""
        if value in self._named:
            return value
        with self._lock:
            if value in self._named:
                return value
            if len(self._named) >= self.cap:
                return OTHER
            self._named[value] = None
            self._snapshot = tuple(self._named)
            return value

    def named(self) -> tuple[str, ...]:
        """The values that have their own label, in the order they got it."""
        return self._snapshot
