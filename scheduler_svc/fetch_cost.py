"""Fetch or compute: whether a prompt's retained prefix is worth bringing from the host arena.

Reuse that makes a request slower than computing it again is worse than no reuse. A host hit
costs a pin (one round trip to the store) and the copy of its blocks into the device; computing
it costs a prefill of its tokens. Both are measured, not guessed: each worker times a prefill
chunk and copies of block runs in its own swap path when it starts (``worker_svc/calibrate.py``)
and reports them when it joins (``WorkerHello``), and the host agent times its round trips to the
store. So on a cheap model (a small one, or a fast device) a prefix is recomputed, and on a
large one it is fetched::

    fetch  = round trip + runs x copy latency + blocks x block bytes / copy bandwidth
    compute = tokens / prefill tokens per second
    fetch it when fetch < compute

The decision is taken at submit, before the request has a worker, from the joined workers'
figures averaged (the workers of a deployment run one model; their devices are normally
alike). ``--host-fetch always|never`` overrides it (tests, measurements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class HostFetch(StrEnum):
    AUTO = "auto"  # fetch when the measured costs say it is faster than prefilling
    ALWAYS = "always"
    NEVER = "never"


HOST_FETCH: tuple[str, ...] = tuple(h.value for h in HostFetch)


@dataclass(frozen=True, slots=True)
class DeviceCosts:
    """What a worker measured at start. Zero: not measured (a fetch is then assumed to pay, as
    before there was a cost model)."""

    prefill_tokens_per_s: float = 0.0  # one prefill chunk's tokens over its forward's time
    copy_latency_s: float = 0.0  # per copy (one block run in the group layout)
    copy_bytes_per_s: float = 0.0  # host -> device, beyond the latency

    @property
    def measured(self) -> bool:
        return self.prefill_tokens_per_s > 0 and self.copy_bytes_per_s > 0


NOT_MEASURED = DeviceCosts()


def fetch_seconds(
    costs: DeviceCosts, *, num_blocks: int, num_runs: int, block_bytes: int, round_trip_s: float
) -> float:
    """Estimated time to bring `num_blocks` host blocks (in `num_runs` runs) into a device."""
    return (
        round_trip_s
        + num_runs * costs.copy_latency_s
        + num_blocks * block_bytes / costs.copy_bytes_per_s
    )


def prefill_seconds(costs: DeviceCosts, num_tokens: int) -> float:
    """Estimated time to compute `num_tokens` prompt tokens instead."""
    return num_tokens / costs.prefill_tokens_per_s


def fetch_pays(
    mode: HostFetch,
    costs: DeviceCosts | None,
    *,
    num_tokens: int,
    num_blocks: int,
    num_runs: int,
    block_bytes: int,
    round_trip_s: float,
) -> bool:
    """Whether a host hit of `num_tokens` tokens in `num_blocks` blocks should be fetched."""
    if mode is not HostFetch.AUTO:
        return mode is HostFetch.ALWAYS
    if costs is None or not costs.measured:
        return True
    fetch = fetch_seconds(
        costs,
        num_blocks=num_blocks,
        num_runs=num_runs,
        block_bytes=block_bytes,
        round_trip_s=round_trip_s,
    )
    return fetch < prefill_seconds(costs, num_tokens)


def mean_costs(all_costs: Iterable[DeviceCosts]) -> DeviceCosts | None:
    """The measured workers' figures averaged (throughputs and latencies alike); None when no
    worker measured them."""
    measured = [c for c in all_costs if c.measured]
    if not measured:
        return None
    n = len(measured)
    return DeviceCosts(
        prefill_tokens_per_s=sum(c.prefill_tokens_per_s for c in measured) / n,
        copy_latency_s=sum(c.copy_latency_s for c in measured) / n,
        copy_bytes_per_s=sum(c.copy_bytes_per_s for c in measured) / n,
    )


def count_runs(blocks: Sequence[int]) -> int:
    """Contiguous runs in `blocks` (each one copy in the group layout)."""
    return sum(1 for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1] + 1)
