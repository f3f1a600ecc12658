"""Swap bandwidth: block-group swaps (FastSwitch) against one raw memcpy and the per-layer baseline.

For each context length it swaps one sequence's KV out of the device pool into the host arena
and back, and reports GB/s (1 GB = 1e9 bytes) of

    (a) memcpy     one torch ``copy_`` of one contiguous tensor of the same total size: the
                   limit of this machine's copy path
    (b) group      the SwapEngine, FastSwitch mode: block-group layout, async (copy thread);
                   timed from submit to the completion the engine reports (``wait_all``)
    (c) per-layer  the SwapEngine, vLLM-style baseline: one copy per block per layer per K/V,
                   synchronous (inline in the caller, as in the step)

and, with ``--pageable``,

    (p) pageable   the same single ``copy_`` as (a), to or from an ordinary (not page-locked)
                   host buffer: what a swap would get without ``cudaHostRegister`` on a GPU
                   (the driver stages it through a pinned bounce buffer); on the CPU it is
                   just a second memcpy

with ``(b)/(a)`` and ``(b)/(c)``: the issue's goal is (b) >= 0.8 (a) and (b) >= 3 (c). GB/s are
medians over ``--repeats`` runs; each run times the three methods back to back, and the ratios
are medians of the per-run ratios, so drift on a shared machine hits both sides of a ratio.

Geometry: LLaMA-3-8B by default (32 layers, 8 KV heads, head_dim 128, fp16): 128 KiB of KV per
token, 2 MiB per block of 16 tokens, so a 8k-token context is 1 GiB. Without a GPU the "device"
pool is what the worker uses on CPU: a pre-faulted shared-memory tensor; the host side is a
pre-faulted shared-memory arena (servekit.shm), as the KV store makes it.

Allocation patterns: ``contiguous`` (the sequence owns one block group: 1 copy per swap in
(b)) and ``groups of G`` (``--group-blocks``, default 4: the sequence's blocks are scattered
groups of G, so (b) makes blocks/G copies of G blocks) to show copies per swap against bytes
per copy. (c) makes blocks x layers x 2 copies either way.

    .venv/bin/python benchmarks/swap_bandwidth.py [--contexts 256,1024,2048,4096,8192]
        [--repeats 5] [--group-blocks 4] [--directions out,in] [--device cpu|cuda] [--pageable]

On a GPU (``--device cuda``) the pool is in GPU memory and the arena is page-locked by the swap
engine, so (a) is one DMA copy of the total size and (b) runs on the engine's side stream.

Memory: two regions of (largest context's blocks x block bytes): 2 GiB at the defaults (one
more with ``--pageable``).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from servekit import shm
from servekit.memcpy_tuning import TUNABLE, reexec_with_streaming_memcpy
from worker_svc.kv_pool import KVPool
from worker_svc.swap_engine import RunCopy, SwapEngine, SwapLayout


@dataclass(frozen=True, slots=True)
class Geometry:
    layers: int
    kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype

    @property
    def block_bytes(self) -> int:
        return (
            self.layers * 2 * self.block_size * self.kv_heads * self.head_dim * self.dtype.itemsize
        )


@dataclass(frozen=True, slots=True)
class Row:
    context: int
    pattern: str
    direction: str
    blocks: int
    copies_b: int
    copies_c: int
    gbps: dict[str, float]  # medians
    b_over_a: float  # median of the per-run ratios (each run's three methods back to back)
    b_over_c: float
    b_over_p: float | None = None  # with --pageable


def layout_copies(blocks: int, group: int, seed: int) -> list[RunCopy]:
    """The sequence's blocks in token order -> host extent [0, blocks). ``group == 0``: one
    contiguous device run; else groups of ``group`` blocks at shuffled device positions."""
    if group == 0 or group >= blocks:
        return [RunCopy(0, 0, blocks)]
    starts = list(range(0, blocks, group))
    random.Random(seed).shuffle(starts)  # no two consecutive groups are adjacent on the device
    copies, host = [], 0
    for s in starts:
        n = min(group, blocks - s)
        copies.append(RunCopy(s, host, n))
        host += n
    return copies


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, pool: KVPool, host: torch.Tensor, pageable: torch.Tensor | None) -> None:
        self.pool = pool
        self.host = host
        self.pageable = pageable  # an ordinary host buffer of the arena's shape, never pinned
        self.dev = pool.tensor.view(torch.uint8).view(pool.num_blocks, -1)
        self.group = SwapEngine(pool, host, layout=SwapLayout.GROUP, sync=False)
        self.baseline = SwapEngine(pool, host, layout=SwapLayout.PER_LAYER, sync=True)

    def close(self) -> None:
        self.group.close()
        self.baseline.close()

    def memcpy(self, blocks: int, direction: str, host_side: torch.Tensor | None = None) -> float:
        """One ``copy_`` of ``blocks`` blocks to or from ``host_side`` (default: the arena)."""
        dev = self.dev[:blocks]
        host = (self.host if host_side is None else host_side)[:blocks]
        cuda = dev.device.type == "cuda"

        def run() -> None:
            if direction == "out":
                host.copy_(dev, non_blocking=cuda)
            else:
                dev.copy_(host, non_blocking=cuda)
            if cuda:
                torch.cuda.synchronize(dev.device)

        return timed(run)

    def swap(self, engine: SwapEngine, copies: list[RunCopy], direction: str) -> tuple[float, int]:
        def run() -> None:
            if direction == "out":
                engine.submit_out(1, copies)
            else:
                engine.submit_in(1, copies)
            engine.wait_all()

        seconds = timed(run)
        done = engine.poll()
        assert (done.swapped_out if direction == "out" else done.swapped_in) == (1,), done
        return seconds, done.copies


def measure(
    bench: Bench, context: int, group: int, direction: str, repeats: int, block_size: int
) -> Row:
    blocks = -(-context // block_size)
    nbytes = blocks * bench.pool.block_bytes
    copies = layout_copies(blocks, group, seed=context)
    times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    if bench.pageable is not None:
        times["p"] = []
    copies_b = copies_c = 0
    for _ in range(repeats):
        times["a"].append(bench.memcpy(blocks, direction))
        if bench.pageable is not None:
            times["p"].append(bench.memcpy(blocks, direction, bench.pageable))
        t, copies_b = bench.swap(bench.group, copies, direction)
        times["b"].append(t)
        t, copies_c = bench.swap(bench.baseline, copies, direction)
        times["c"].append(t)
    gbps = {k: nbytes / statistics.median(v) / 1e9 for k, v in times.items()}
    a, b, c = times["a"], times["b"], times["c"]
    b_over_a = statistics.median(ta / tb for ta, tb in zip(a, b, strict=True))
    b_over_c = statistics.median(tc / tb for tc, tb in zip(c, b, strict=True))
    b_over_p = (
        statistics.median(tp / tb for tp, tb in zip(times["p"], b, strict=True))
        if "p" in times
        else None
    )
    pattern = "contiguous" if len(copies) == 1 else f"groups of {group}"
    return Row(
        context, pattern, direction, blocks, copies_b, copies_c, gbps, b_over_a, b_over_c, b_over_p
    )


def check_round_trip(bench: Bench, blocks: int, group: int) -> None:
    """Out then in to a cleared pool restores every byte (a benchmark of wrong copies is moot)."""
    copies = layout_copies(blocks, group, seed=blocks)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(0, 256, (blocks, bench.pool.block_bytes), dtype=torch.uint8, generator=g)
    src = src.to(bench.pool.device)
    bench.dev[:blocks].copy_(src)
    for engine in (bench.group, bench.baseline):
        bench.swap(engine, copies, "out")
        bench.dev[:blocks].zero_()
        bench.swap(engine, copies, "in")
        if not torch.equal(bench.dev[:blocks], src):
            raise SystemExit(f"round trip corrupted bytes ({engine.layout})")


def print_table(rows: list[Row], block_bytes: int) -> None:
    pageable = any(r.b_over_p is not None for r in rows)
    head = (
        f"{'context':>7} {'pattern':>12} {'dir':>3} {'MiB':>6} {'copies b':>8} "
        f"{'KiB/copy b':>10} {'copies c':>8} {'(a) GB/s':>9} {'(b) GB/s':>9} {'(c) GB/s':>9} "
        f"{'(b)/(a)':>7} {'(b)/(c)':>7}"
    ) + (f" {'(p) GB/s':>9} {'(b)/(p)':>7}" if pageable else "")
    print(head)
    print("-" * len(head))
    for r in rows:
        mib = r.blocks * block_bytes / 2**20
        per_copy = r.blocks * block_bytes / r.copies_b / 1024
        a, b, c = r.gbps["a"], r.gbps["b"], r.gbps["c"]
        print(
            f"{r.context:>7} {r.pattern:>12} {r.direction:>3} {mib:>6.0f} {r.copies_b:>8} "
            f"{per_copy:>10.0f} {r.copies_c:>8} {a:>9.2f} {b:>9.2f} {c:>9.2f} "
            f"{r.b_over_a:>7.2f} {r.b_over_c:>7.2f}"
            + (f" {r.gbps['p']:>9.2f} {r.b_over_p:>7.2f}" if r.b_over_p is not None else "")
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", default="256,1024,2048,4096,8192", help="tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="runs per cell; medians (>= 1)")
    p.add_argument(
        "--group-blocks",
        type=int,
        default=4,
        help="also measure a fragmented pattern of groups of G blocks (0: contiguous only)",
    )
    p.add_argument("--directions", default="out,in", help="out (device->host), in, or both")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (device pool = shm tensor) or cuda[:N] (device pool in GPU memory, arena pinned)",
    )
    p.add_argument(
        "--pageable",
        action="store_true",
        help="also time (p): the one large copy to/from an ordinary, not page-locked buffer",
    )
    args = p.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    directions = [d for d in args.directions.split(",") if d]
    if args.repeats < 1 or not contexts or min(contexts) <= 0:
        p.error("--repeats and every context must be >= 1")
    if any(d not in ("out", "in") for d in directions):
        p.error("--directions takes out and/or in")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device is available")
    geo = Geometry(
        args.layers, args.kv_heads, args.head_dim, args.block_size, getattr(torch, args.dtype)
    )
    num_blocks = -(-max(contexts) // geo.block_size)
    size = num_blocks * geo.block_bytes
    patterns = [0] + ([args.group_blocks] if args.group_blocks > 0 else [])
    print(
        f"geometry: {geo.layers} layers, {geo.kv_heads} KV heads, head_dim {geo.head_dim}, "
        f"{args.dtype}: {geo.block_bytes // geo.block_size // 1024} KiB/token, "
        f"{geo.block_bytes / 2**20:g} MiB/block of {geo.block_size} tokens"
    )
    where = (
        f"{torch.cuda.get_device_name(device)} memory, host arena pinned (cudaHostRegister)"
        if device.type == "cuda"
        else f"pre-faulted shm tensor (CPU, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()})"
    )
    print(f"device pool: {where}; host arena: pre-faulted shm; {args.repeats} repeats, medians")
    tuning = next(
        (t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t.startswith(TUNABLE)),
        f"{TUNABLE}: glibc's default",
    )
    print(f"memcpy: {tuning} (servekit/memcpy_tuning.py)")
    tag = f"fastswitch-bench-{os.getpid()}"
    rows: list[Row] = []
    pool_size = size if device.type == "cpu" else 1  # CUDA: the pool is in GPU memory
    with (
        shm.create(f"{tag}-pool", pool_size) as pool_buf,
        shm.create(f"{tag}-arena", size) as arena,
    ):
        shape = (num_blocks, geo.layers, 2, geo.block_size, geo.kv_heads, geo.head_dim)
        tensor = (
            pool_buf.as_tensor(geo.dtype, shape)
            if device.type == "cpu"
            else torch.zeros(shape, dtype=geo.dtype, device=device)
        )
        pool = KVPool(
            num_blocks=num_blocks,
            num_layers=geo.layers,
            block_size=geo.block_size,
            num_kv_heads=geo.kv_heads,
            head_dim=geo.head_dim,
            dtype=geo.dtype,
            device=device,
            tensor=tensor,
        )
        host = arena.as_tensor(torch.uint8, (num_blocks, geo.block_bytes))
        pageable = (
            torch.ones((num_blocks, geo.block_bytes), dtype=torch.uint8) if args.pageable else None
        )  # ones: every page faulted in before the first timed copy
        bench = Bench(pool, host, pageable)
        try:
            check_round_trip(bench, min(num_blocks, 64), patterns[-1])
            for context in contexts:
                for group in patterns:
                    for direction in directions:
                        rows.append(
                            measure(bench, context, group, direction, args.repeats, geo.block_size)
                        )
        finally:
            bench.close()
            del bench, pool, host, tensor, pageable
    print_table(rows, geo.block_bytes)
    return 0


if __name__ == "__main__":
    reexec_with_streaming_memcpy()  # as a worker runs (FASTSWITCH_GLIBC_TUNING=0: glibc's own)
    sys.exit(main())
