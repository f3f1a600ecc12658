"""servekit.heap: glibc keeps freed memory until malloc_trim gives it back, which is what the
scheduler's periodic trim relies on (docs/failures.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from scheduler_svc.server import build_parser, config_from_args
from servekit.heap import malloc_kib

# In a fresh interpreter: fill the C heap with blocks malloc serves (bytes over pymalloc's 512),
# keep one in 20 so the free memory lies between live blocks (no top to trim by itself), free
# the rest; print RSS and malloc's free part before and after trim().
_PROBE = textwrap.dedent(
    """
    from pathlib import Path
    from servekit import heap
    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    keep, junk = [], []
    for i in range(60_000):
        (keep if i % 20 == 0 else junk).append(bytes(2000 + i % 7))
    del junk
    before, free = rss(), heap.malloc_kib()["malloc_free_kib"]
    gave = heap.trim()
    print(before, free, rss(), heap.malloc_kib()["malloc_free_kib"], gave, len(keep))
    """
)


@pytest.mark.skipif(not malloc_kib(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_trim_gives_the_free_heap_back_to_the_system():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    before, free, after = map(int, out[:3])
    assert free > 80_000  # ~110 MiB freed between live blocks, kept by malloc...
    assert before - after > 60_000 and out[4] == "True"  # ...until the trim returns its pages


def test_the_scheduler_trims_every_30_s_unless_told_otherwise():
    assert config_from_args(build_parser().parse_args([])).malloc_trim_s == 30.0
    assert config_from_args(build_parser().parse_args(["--malloc-trim-s", "0"])).malloc_trim_s == 0
    with pytest.raises(ValueError, match="--malloc-trim-s"):
        config_from_args(build_parser().parse_args(["--malloc-trim-s", "nan"]))
