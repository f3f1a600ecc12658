"""A debug aid for memory growth (off unless ``FASTSWITCH_MEMTRACE_S`` is set; docs/failures.md).

With ``FASTSWITCH_MEMTRACE_S=N`` the scheduler traces Python allocations (tracemalloc) and every N
seconds logs one ``memtrace`` line: its RSS, the Python heap tracemalloc sees, what glibc's
malloc holds (in use, and free but not given back: ``servekit.heap``), the live objects the
garbage collector tracks, the sizes of the service's own tables (a callback), and the allocation
sites that grew most since the last line and since tracing started. A leak shows as a table or
a site that keeps growing, or as sites still grown "since start" once the service is idle
again; RSS growing while the traced heap stays flat and malloc's free part grows is the
allocator keeping freed memory, not Python objects. Tracing costs CPU and memory, and a
snapshot stalls the event loop for up to a second under load: never on in production.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path

from servekit.heap import malloc_kib

log = logging.getLogger(__name__)

ENV = "FASTSWITCH_MEMTRACE_S"
TOP = 8  # allocation sites per line


def interval_s() -> float | None:
    """The seconds between lines from the environment, or None (off, or not a positive number)."""
    try:
        value = float(os.environ.get(ENV, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def top_growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, n: int = TOP
) -> list[str]:
    """The `n` allocation sites (file:line) whose traced size grew most, as 'site +KiB (+count)'."""
    stats = after.compare_to(before, "lineno")
    grown = sorted((s for s in stats if s.size_diff > 0), key=lambda s: -s.size_diff)[:n]
    return [
        f"{s.traceback[0].filename.rsplit('/', 2)[-1]}:{s.traceback[0].lineno} "
        f"+{s.size_diff // 1024}KiB ({s.count_diff:+d})"
        for s in grown
    ]


async def run(sizes: Callable[[], Mapping[str, int]], every_s: float) -> None:
    """Until cancelled: one ``memtrace`` log line every `every_s` seconds (see the module doc)."""
    tracemalloc.start()
    first = before = tracemalloc.take_snapshot()
    try:
        while True:
            await asyncio.sleep(every_s)
            after = tracemalloc.take_snapshot()
            traced, peak = tracemalloc.get_traced_memory()
            log.info(
                "memtrace",
                extra={
                    "rss_kib": rss_kib(),
                    "traced_kib": traced // 1024,
                    "traced_peak_kib": peak // 1024,
                    **malloc_kib(),
                    "gc_objects": len(gc.get_objects()),
                    "tasks": len(asyncio.all_tasks()),
                    "sizes": " ".join(f"{k}={v}" for k, v in sizes().items()),
                    "top": " | ".join(top_growth(before, after)),
                    # what outlives the load shows here once the service is idle again
                    "top_since_start": " | ".join(top_growth(first, after)),
                },
            )
            before = after
    finally:
        tracemalloc.stop()
