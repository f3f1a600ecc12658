"""What this worker's device costs, measured once at start, before it joins the scheduler.

The scheduler fetches a retained prefix from the host only when that is faster than prefilling
it (``scheduler_svc/fetch_cost.py``), and how much faster depends on the model and the device: on
a tiny model on a CPU a prefill is nearly free, on a large one on a GPU it is not. So the worker
measures both sides with its own code paths and reports them in its hello:

* prefill: one chunk of ``PREFILL_TOKENS`` tokens through ``Engine.execute`` (a warm-up first,
  then the best of a few runs), tokens per second;
* copies: host -> device copies of one block and of a run of blocks through a ``SwapEngine`` of
  the worker's own layout and mode, from a scratch host buffer of the same block size (the
  arena's blocks hold other requests' KV and must not be written), fitted to a latency per copy
  plus bytes over a bandwidth.

It writes only into device blocks at the head of the pool, while nothing else uses them (the
scheduler has not seen the worker yet), and takes well under a second on the tiny CPU model.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch

from servekit.names import SwapLayout
from worker_svc.engine import Engine
from worker_svc.kv_pool import KVPool
from worker_svc.plan import PrefillChunk, RunCopy
from worker_svc.sampling import SamplingParams
from worker_svc.swap_engine import SwapEngine

PREFILL_TOKENS = 256  # half the scheduler's default prefill chunk: long enough to batch well
REPEATS = 2  # timed runs after a warm-up; the best counts (the machine may be shared)
RUN_BYTES = 8 << 20  # the long copy: at least this many bytes (block groups are MiBs)
MAX_RUN_BLOCKS = 64
_SEQ = -1  # the calibration's sequence id (the scheduler's start at 0)


class MeasuredCosts(NamedTuple):
    prefill_tokens_per_s: float
    copy_latency_s: float
    copy_bytes_per_s: float


def measure(engine: Engine, layout: SwapLayout, sync: bool) -> MeasuredCosts:
    """Both measurements, with the worker's engine and its swap layout and mode."""
    latency, bandwidth = measure_copies(engine.pool, layout, sync)
    return MeasuredCosts(measure_prefill(engine), latency, bandwidth)


def measure_prefill(engine: Engine) -> float:
    """Tokens per second of one prefill chunk (as long as the pool and the context allow)."""
    pool = engine.pool
    n = min(PREFILL_TOKENS, engine.spec.max_model_len, pool.num_blocks * pool.block_size)
    tokens = tuple(i % engine.spec.vocab_size for i in range(n))
    blocks = range(-(-n // pool.block_size))
    best = math.inf
    for i in range(REPEATS + 1):
        engine.start_seq(_SEQ, SamplingParams())
        try:
            engine.append_blocks(_SEQ, blocks)
            started = time.perf_counter()
            engine.execute([PrefillChunk(_SEQ, tokens, True)], [])  # its sample waits for it
            elapsed = time.perf_counter() - started
        finally:
            engine.drop_seq(_SEQ)
        if i:  # the first run warms up
            best = min(best, elapsed)
    return n / best


def measure_copies(pool: KVPool, layout: SwapLayout, sync: bool) -> tuple[float, float]:
    """(seconds per copy, bytes per second) of host -> device copies in this worker's swap
    path: one block, then one run of blocks, each the best of a few."""
    block_bytes = pool.block_bytes
    count = max(2, min(pool.num_blocks, MAX_RUN_BLOCKS, -(-RUN_BYTES // block_bytes)))
    count = min(count, pool.num_blocks)
    host = torch.empty(
        (count, block_bytes), dtype=torch.uint8, pin_memory=pool.device.type == "cuda"
    )
    with SwapEngine(pool, host, layout=layout, sync=sync) as swaps:
        _time_copy(swaps, 1, REPEATS)  # warm-up
        one = _time_copy(swaps, 1, REPEATS)
        run = _time_copy(swaps, count, REPEATS) if count > 1 else one
    per_block = max(run - one, 1e-9) / max(count - 1, 1)
    bandwidth = block_bytes / per_block
    return max(one - per_block, 0.0), bandwidth


def _time_copy(swaps: SwapEngine, count: int, repeats: int) -> float:
    """The best wall time of `repeats` swap-ins of `count` blocks, submitted to done."""
    best = math.inf
    for seq in range(repeats):
        started = time.perf_counter()
        swaps.submit_in(seq, [RunCopy(0, 0, count)])
        swaps.wait_all()
        done = swaps.poll()
        best = min(best, time.perf_counter() - started)
        if done.failed:
            raise RuntimeError(f"calibration copy failed: {done.failed[0].message}")
    return best
