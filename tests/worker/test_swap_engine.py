"""SwapEngine: bit-exact round trips, copy counts per layout, cancel, overlap, clean close."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator

import pytest
import torch

from kvstore_svc.arena import ArenaLayout
from servekit import shm
from worker_svc.kv_pool import KVPool
from worker_svc.swap_engine import (
    Direction,
    RunCopy,
    SwapCompletions,
    SwapDone,
    SwapEngine,
    SwapLayout,
)

LAYERS = 3
MODES = [(layout, sync) for layout in SwapLayout for sync in (False, True)]
MODE_IDS = [f"{layout}-{'sync' if sync else 'async'}" for layout, sync in MODES]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_pool(num_blocks: int = 64, device: str = "cpu") -> KVPool:
    return KVPool(
        num_blocks=num_blocks,
        num_layers=LAYERS,
        block_size=4,
        num_kv_heads=2,
        head_dim=8,
        dtype=torch.float16,
        device=device,
    )


def randomize(pool: KVPool, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(
        0, 256, (pool.num_blocks, pool.block_bytes), dtype=torch.uint8, generator=g
    )
    pool.tensor.view(torch.uint8).view(pool.num_blocks, -1).copy_(data)


def block_bytes_of(pool: KVPool) -> torch.Tensor:
    """The pool as uint8 ``[num_blocks, block_bytes]`` (on the CPU)."""
    return pool.tensor.view(torch.uint8).view(pool.num_blocks, -1).cpu()


def random_runs(rng: random.Random, total: int, space: int, max_len: int) -> list[tuple[int, int]]:
    """Non-overlapping runs of mixed lengths covering ``total`` blocks of ``[0, space)``."""
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(min(rng.randint(1, max_len), total - sum(lengths)))
    gaps = sorted(rng.randint(0, space - total) for _ in lengths)  # free blocks before each run
    placed, pos, prev = [], 0, 0
    for gap, n in zip(gaps, lengths, strict=True):
        pos += gap - prev
        prev = gap
        placed.append((pos, n))
        pos += n
    rng.shuffle(placed)  # token order differs from address order
    return placed


def pair(device_runs: list[tuple[int, int]], host_runs: list[tuple[int, int]]) -> list[RunCopy]:
    """RunCopies of one sequence: its blocks in token order, split where either side breaks."""
    dev = [b for s, n in device_runs for b in range(s, s + n)]
    host = [b for s, n in host_runs for b in range(s, s + n)]
    assert len(dev) == len(host)
    copies: list[RunCopy] = []
    for d, h in zip(dev, host, strict=True):
        last = copies[-1] if copies else None
        if last and d == last.device_start + last.count and h == last.host_start + last.count:
            copies[-1] = last._replace(count=last.count + 1)
        else:
            copies.append(RunCopy(d, h, 1))
    return copies


def blocks(copies: list[RunCopy], side: str) -> list[int]:
    start = "device_start" if side == "device" else "host_start"
    return [b for c in copies for b in range(getattr(c, start), getattr(c, start) + c.count)]


def swap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fastswitch-swap"]


@pytest.fixture
def engine_factory() -> Iterator[list[SwapEngine]]:
    made: list[SwapEngine] = []
    yield made
    for e in made:
        e.close()
    assert not swap_threads()


@pytest.mark.parametrize(("layout", "sync"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_out_then_in_restores_bytes(
    layout: SwapLayout, sync: bool, seed: int, engine_factory: list[SwapEngine]
) -> None:
    rng = random.Random(seed)
    pool = make_pool()
    randomize(pool, seed)
    host = torch.zeros(96, pool.block_bytes, dtype=torch.uint8)
    engine = SwapEngine(pool, host, layout=layout, sync=sync)
    engine_factory.append(engine)
    n = rng.randint(8, 24)
    host_runs = random_runs(rng, n, 96, 7)  # extents that do not line up with the device runs
    out = pair(random_runs(rng, n, 64, 5), host_runs)
    before = block_bytes_of(pool).clone()

    engine.submit_out(1, out)
    engine.wait_all()
    done = engine.poll()
    assert done.swapped_out == (1,) and done.swapped_in == () and not done.failed
    assert done.out_bytes == n * pool.block_bytes
    expected_copies = len(out) if layout is SwapLayout.GROUP else n * LAYERS * 2
    assert done.copies == engine.copies_issued == expected_copies
    # One record per job: its bytes and copies, and the time its copies took.
    (job,) = done.jobs
    assert job == SwapDone(Direction.OUT, done.out_bytes, expected_copies, job.seconds)
    assert job.seconds == engine.copy_seconds > 0
    assert torch.equal(host[blocks(out, "host")], before[blocks(out, "device")])
    others = sorted(set(range(96)) - set(blocks(out, "host")))
    assert int(host[others].count_nonzero()) == 0  # nothing else written

    randomize(pool, seed + 100)  # the device blocks are reused meanwhile
    clobbered = block_bytes_of(pool).clone()
    into = pair(random_runs(rng, n, 64, 5), host_runs)  # other device blocks, same host copy
    engine.submit_in(1, into)
    engine.wait_all()
    done = engine.poll()
    assert done.swapped_in == (1,) and done.in_bytes == n * pool.block_bytes
    after = block_bytes_of(pool)
    assert torch.equal(after[blocks(into, "device")], before[blocks(out, "device")])
    untouched = sorted(set(range(64)) - set(blocks(into, "device")))
    assert torch.equal(after[untouched], clobbered[untouched])
    assert engine.poll() == SwapCompletions()  # each completion is reported once


@pytest.mark.parametrize("sync", [False, True])
def test_copies_per_layout(sync: bool, engine_factory: list[SwapEngine]) -> None:
    """Runs of 3, 1 and 4 blocks: group = 3 copies, per-layer = 8 blocks x 3 layers x K/V."""
    copies = [RunCopy(0, 10, 3), RunCopy(5, 0, 1), RunCopy(20, 30, 4)]
    counts = {}
    for layout in SwapLayout:
        pool = make_pool()
        engine = SwapEngine(
            pool, torch.zeros(40, pool.block_bytes, dtype=torch.uint8), layout=layout, sync=sync
        )
        engine_factory.append(engine)
        engine.submit_out(7, copies)
        engine.wait_all()
        counts[layout] = (engine.poll().copies, engine.copies_issued)
    assert counts == {SwapLayout.GROUP: (3, 3), SwapLayout.PER_LAYER: (48, 48)}


@pytest.mark.parametrize(("layout", "sync"), MODES, ids=MODE_IDS)
def test_copy_seconds_count_the_time_spent_copying(
    layout: SwapLayout, sync: bool, engine_factory: list[SwapEngine]
) -> None:
    pool = make_pool()
    engine = SwapEngine(
        pool, torch.zeros(40, pool.block_bytes, dtype=torch.uint8), layout=layout, sync=sync
    )
    engine_factory.append(engine)
    assert engine.copy_seconds == 0.0
    engine.submit_out(1, [RunCopy(0, 0, 16)])
    engine.wait_all()
    spent = engine.copy_seconds
    assert spent > 0.0
    engine.poll()
    assert engine.copy_seconds == spent  # reporting copies nothing


def test_cancel_before_start_writes_nothing(engine_factory: list[SwapEngine]) -> None:
    pool = make_pool()
    randomize(pool, 5)
    host = torch.zeros(16, pool.block_bytes, dtype=torch.uint8)
    engine = SwapEngine(pool, host)
    engine_factory.append(engine)
    # Holding the engine's lock keeps the copy thread from taking the job: it is still queued.
    with engine._lock:
        engine.submit_out(1, [RunCopy(0, 0, 8)])
        assert engine.in_flight == 1
        assert engine.cancel_out(1)
    assert not engine.cancel_out(1)  # already gone
    assert not engine.cancel_out(99)  # never submitted
    engine.wait_all()
    assert engine.poll() == SwapCompletions()
    assert engine.copies_issued == 0 and engine.in_flight == 0
    assert int(host.count_nonzero()) == 0

    engine.submit_out(1, [RunCopy(0, 0, 8)])  # the seq may swap out again later
    engine.wait_all()
    assert not engine.cancel_out(1)  # finished: too late to cancel, reported as done
    assert engine.poll().swapped_out == (1,)
    assert torch.equal(host[:8], block_bytes_of(pool)[:8])


def test_sync_mode_copies_inline(engine_factory: list[SwapEngine]) -> None:
    pool = make_pool()
    randomize(pool, 3)
    host = torch.zeros(8, pool.block_bytes, dtype=torch.uint8)
    engine = SwapEngine(pool, host, sync=True)
    engine_factory.append(engine)
    assert not swap_threads()
    engine.submit_out(4, [RunCopy(2, 1, 3)])
    assert torch.equal(host[1:4], block_bytes_of(pool)[2:5])  # done on return
    assert not engine.cancel_out(4)
    assert engine.poll().swapped_out == (4,)


def test_bad_submissions_change_nothing(engine_factory: list[SwapEngine]) -> None:
    pool = make_pool(8)
    engine = SwapEngine(pool, torch.zeros(4, pool.block_bytes, dtype=torch.uint8))
    engine_factory.append(engine)
    with pytest.raises(ValueError, match="outside the pool"):
        engine.submit_out(1, [RunCopy(6, 0, 3)])
    with pytest.raises(ValueError, match="outside the arena"):
        engine.submit_in(1, [RunCopy(0, 2, 3)])
    with pytest.raises(ValueError, match="empty run"):
        engine.submit_out(1, [RunCopy(0, 0, 0)])
    assert engine.in_flight == 0
    with engine._lock:  # keep the first job queued so the second is a duplicate
        engine.submit_out(1, [RunCopy(0, 0, 1)])
        with pytest.raises(ValueError, match="already has a swap-out"):
            engine.submit_out(1, [RunCopy(1, 1, 1)])
    engine.wait_all()
    assert engine.poll().swapped_out == (1,)
    with pytest.raises(ValueError, match="host arena must be uint8"):
        SwapEngine(pool, torch.zeros(4, pool.block_bytes + 1, dtype=torch.uint8))


def test_close_joins_the_thread_and_refuses_work() -> None:
    pool = make_pool()
    engine = SwapEngine(pool, torch.zeros(8, pool.block_bytes, dtype=torch.uint8))
    assert len(swap_threads()) == 1
    engine.submit_out(1, [RunCopy(0, 0, 8)])
    engine.close()
    assert not swap_threads()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit_in(1, [RunCopy(0, 0, 1)])


@pytest.mark.parametrize("layout", list(SwapLayout))
def test_swap_out_overlapping_compute_on_other_blocks(
    layout: SwapLayout, engine_factory: list[SwapEngine]
) -> None:
    """A fake forward keeps writing blocks [256, 512) while blocks [0, 256) swap out."""
    pool = make_pool(512)
    randomize(pool, 9)
    before = block_bytes_of(pool)[:256].clone()
    host = torch.zeros(256, pool.block_bytes, dtype=torch.uint8)
    engine = SwapEngine(pool, host, layout=layout)
    engine_factory.append(engine)
    stop = threading.Event()
    rounds = []

    def compute() -> None:
        k = 0
        while not stop.is_set() or k < 3:
            k += 1
            pool.tensor[256:].fill_(float(k))
            rounds.append(k)

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        engine.submit_out(1, [RunCopy(0, 0, 100), RunCopy(100, 100, 156)])
        engine.wait_all()
    finally:
        stop.set()
        worker.join()
    assert engine.poll().swapped_out == (1,)
    assert torch.equal(host, before)
    assert torch.equal(block_bytes_of(pool)[:256], before)
    assert bool((pool.tensor[256:] == float(rounds[-1])).all())


def test_shm_arena_is_released_on_close() -> None:
    """Against a real shared-memory arena: after close() no view keeps the mapping."""
    name = f"fastswitch-test-{uuid.uuid4().hex[:12]}"
    pool = make_pool(16)
    randomize(pool, 11)
    layout = ArenaLayout(pool.block_bytes, 32)
    try:
        with shm.create(name, layout.used_bytes) as owner:
            reader = shm.open_existing(name)
            engine = SwapEngine(pool, layout.blocks_view(reader))
            engine.submit_out(1, [RunCopy(3, 20, 5)])
            engine.wait_all()
            engine.close()
            reader.close()  # would raise BufferError if the engine still held a view
            store_view = layout.blocks_view(owner)
            assert torch.equal(store_view[20:25], block_bytes_of(pool)[3:8])
            del store_view
    finally:
        shm.remove_stale(name)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("layout", list(SwapLayout))
def test_cuda_round_trip_pinned_arena_side_stream(layout: SwapLayout) -> None:
    """On CUDA: the arena is page-locked, the swap-out waits for compute already enqueued."""
    name = f"fastswitch-test-{uuid.uuid4().hex[:12]}"
    pool = make_pool(64, device="cuda")
    arena = ArenaLayout(pool.block_bytes, 64)
    try:
        with shm.create(name, arena.used_bytes) as buf:
            host = arena.blocks_view(buf)
            engine = SwapEngine(pool, host, layout=layout)
            assert host.is_pinned()
            # A slow kernel then a write on the compute stream, not synchronized: the swap-out
            # must copy the written values (it waits on the compute stream's event).
            torch.cuda._sleep(50_000_000)
            pool.tensor[10:20].fill_(3.0)
            engine.submit_out(1, [RunCopy(10, 40, 10)])
            engine.wait_all()
            assert engine.poll().swapped_out == (1,)
            expect = torch.full_like(pool.tensor[10:20], 3.0).cpu().view(torch.uint8)
            assert torch.equal(host[40:50], expect.view(10, -1))
            pool.tensor.zero_()
            engine.submit_in(1, [RunCopy(50, 40, 10)])
            engine.wait_all()
            assert engine.poll().swapped_in == (1,)
            torch.cuda.synchronize()
            assert bool((pool.tensor[50:60] == 3.0).all())
            assert bool((pool.tensor[:50] == 0).all())
            engine.close()
            assert not host.is_pinned()
            del host
    finally:
        shm.remove_stale(name)
