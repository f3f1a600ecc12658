"""The worker's start-up measurement of its prefill and copy costs (worker_svc/calibrate.py):
plausible figures from its own paths, quickly, and nothing left behind in the engine."""

from __future__ import annotations

import threading
import time

import pytest

from servekit.names import SwapLayout
from worker_svc.calibrate import measure

# The machine is shared with other jobs: bounds are loose, the figures only need to be sane.
MAX_SECONDS = 20.0


@pytest.mark.parametrize(
    ("layout", "sync"), [(SwapLayout.GROUP, False), (SwapLayout.PER_LAYER, True)]
)
def test_measures_prefill_and_copies_and_leaves_the_engine_empty(make_engine, layout, sync):
    engine = make_engine(num_blocks=64, block_size=16)
    threads = threading.active_count()
    started = time.perf_counter()
    costs = measure(engine, layout, sync)
    assert time.perf_counter() - started < MAX_SECONDS
    assert costs.prefill_tokens_per_s > 0
    assert costs.copy_bytes_per_s > 0 and costs.copy_latency_s >= 0
    assert engine.num_seqs == 0 and engine.num_blocks_held == 0
    assert threading.active_count() == threads  # its swap engine's thread is gone
