"""StepExecutor with a swap engine: a sequence swapped out and back in (to other device blocks)
decodes exactly as if it had never left; cancel, errors, and the KV store bookkeeping of
``settle_swaps`` against a real in-process store."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch

from kvstore_svc.arena import ArenaLayout
from kvstore_svc.servicer import SERVICE_NAME, KVStoreServicer
from kvstore_svc.store import Store
from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from servekit import shm
from servekit.service import GrpcService
from worker_svc.engine import Engine, SamplingParams
from worker_svc.executor import StepExecutor, StepOutcome, SwapOutWritten
from worker_svc.kv_pool import KVPool
from worker_svc.link import settle_swaps
from worker_svc.plan import BlockRun, PrefillChunk, RunCopy, SeqStart, StepPlan, SwapIn, SwapOut
from worker_svc.swap_engine import SwapEngine, SwapLayout

from .helpers import new_pool, prompt_of

BLOCK = 16
PROMPT = prompt_of(37, salt=3)  # 3 blocks of 16 after 9 decodes: 46 tokens
BEFORE, AFTER = 10, 14  # tokens sampled before the swap-out, after the swap-in
MODES = [(layout, sync) for layout in SwapLayout for sync in (False, True)]
MODE_IDS = [f"{layout}-{'sync' if sync else 'async'}" for layout, sync in MODES]


rc = RunCopy


def runs(*pairs: tuple[int, int]) -> tuple[BlockRun, ...]:
    return tuple(BlockRun(s, n) for s, n in pairs)


class Driver:
    """Sends plans to an executor with increasing step ids."""

    def __init__(self, executor: StepExecutor) -> None:
        self.executor = executor
        self.step = 0

    def run(self, **fields: Any) -> StepOutcome:
        self.step += 1
        plan = StepPlan(step_id=self.step, **{k: tuple(v) for k, v in fields.items()})
        return self.executor.run(plan)

    def decode(self, seq: int, n: int) -> list[int]:
        out = []
        for _ in range(n):
            result = self.run(decode=[seq]).result
            assert not result.errors, result.errors
            out.append(result.tokens[0])
        return out

    def until_swaps_done(self, outcome: StepOutcome, field: str) -> StepOutcome:
        """The outcome that reports ``field`` (async: maybe a later, compute-less step)."""
        if _reports(outcome, field):
            return outcome
        assert not self.executor.swaps.sync  # type: ignore[union-attr]
        self.executor.swaps.wait_all()  # type: ignore[union-attr]
        later = self.run()  # an empty plan, as the scheduler sends while it waits
        assert _reports(later, field)
        return later


def _reports(outcome: StepOutcome, field: str) -> bool:
    return bool(outcome.commits) if field == "out" else bool(outcome.result.swap_in_done)


@dataclass
class Setup:
    driver: Driver
    pool: KVPool
    host: torch.Tensor
    swaps: SwapEngine


@pytest.fixture
def make_setup(tiny: Any) -> Iterator[Any]:
    made: list[SwapEngine] = []

    def make(layout: SwapLayout = SwapLayout.GROUP, sync: bool = False) -> Setup:
        spec, model = tiny
        pool = new_pool(spec, model, 24, BLOCK)
        host = torch.zeros(16, pool.block_bytes, dtype=torch.uint8)
        swaps = SwapEngine(pool, host, layout=layout, sync=sync)
        made.append(swaps)
        return Setup(Driver(StepExecutor(Engine(model, spec, pool), swaps)), pool, host, swaps)

    yield make
    for swaps in made:
        swaps.close()


@pytest.fixture(scope="module")
def reference(tiny: Any) -> list[int]:
    """Greedy tokens of PROMPT, never interrupted."""
    spec, model = tiny
    engine = Engine(model, spec, new_pool(spec, model, 8, BLOCK))
    engine.start_seq(1, SamplingParams())
    engine.append_blocks(1, [0, 1, 2, 3])
    out = [engine.execute([PrefillChunk(1, PROMPT, True)], [])[1]]
    out += [engine.execute([], [1])[1] for _ in range(BEFORE + AFTER - 1)]
    return out


def prefill_and_decode(d: Driver, seq: int, blocks: tuple[BlockRun, ...]) -> list[int]:
    first = d.run(
        start=[SeqStart(seq=seq, blocks=blocks)],
        prefill=[PrefillChunk(seq, PROMPT, True)],
    ).result
    assert not first.errors, first.errors
    return [first.tokens[0], *d.decode(seq, BEFORE - 1)]


@pytest.mark.parametrize(("layout", "sync"), MODES, ids=MODE_IDS)
def test_swap_out_and_in_elsewhere_continues_identically(
    make_setup: Any, reference: list[int], layout: SwapLayout, sync: bool
) -> None:
    s: Setup = make_setup(layout, sync)
    d = s.driver
    tokens = prefill_and_decode(d, 5, runs((3, 2), (8, 1)))  # device blocks 3, 4, 8
    position = len(PROMPT) + BEFORE - 1
    assert d.executor.engine.seq_state(5).position == position

    # Swap out to host blocks 10, 11 | 2 (split where the device runs are not).
    hashes = [b"h0", b"h1", b"h2"]
    out = d.run(
        drop=[5],
        swap_out=[
            SwapOut(
                seq=5, copies=(rc(3, 10, 2), rc(8, 2, 1)), lease_id="R1", block_hashes=tuple(hashes)
            )
        ],
    )
    assert sync or out.result.timing.swap_wait_s < 0.05  # async: handing off, not copying
    done = d.until_swaps_done(out, "out")
    assert done.commits == (SwapOutWritten(5, "R1", (10, 11, 2), tuple(hashes)),)
    assert list(done.result.swap_out_done) == []  # reported only once committed (link.py)
    assert done.result.swap_out_bytes == 3 * s.pool.block_bytes
    per_run = 1 if layout is SwapLayout.GROUP else 4 * 2  # tiny: 4 layers, K and V
    assert done.result.swap_copies == (2 if layout is SwapLayout.GROUP else 3 * per_run)
    assert not d.executor.engine.has_seq(5)
    s.pool.tensor[[3, 4, 8]] = torch.randn_like(s.pool.tensor[[3, 4, 8]])  # blocks reused

    # Swap in to device blocks 12 | 20, 21 (split differently from the host extents).
    into = d.run(
        start=[
            SeqStart(
                seq=5,
                position=position,
                last_token=tokens[-1],
                num_generated=len(tokens),
                blocks=runs((12, 1), (20, 2), (6, 1)),  # + one fresh block
            )
        ],
        swap_in=[SwapIn(seq=5, copies=(rc(12, 10, 1), rc(20, 11, 1), rc(21, 2, 1)), lease_id="P1")],
    )
    if sync:
        assert into.result.timing.swap_wait_s > 0
    done = d.until_swaps_done(into, "in")
    assert list(done.result.swap_in_done) == [5] and done.releases == ("P1",)
    assert done.result.swap_in_bytes == 3 * s.pool.block_bytes
    tokens += d.decode(5, AFTER)
    assert tokens == reference


def test_cancel_before_the_copy_starts(make_setup: Any) -> None:
    s: Setup = make_setup()
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    # The engine's lock held: the copy thread cannot take the job before the cancel.
    with s.swaps._lock:
        out = d.run(
            swap_out=[SwapOut(seq=5, copies=(rc(0, 0, 3),), lease_id="R1")],
            cancel_swap_out=[5],
            decode=[5],  # rule 3: it runs again on the blocks it kept
        )
    assert list(out.result.swap_out_cancelled) == [5]
    assert out.releases == ("R1",) and out.commits == ()
    assert len(out.result.tokens) == 1 and not out.result.errors
    s.swaps.wait_all()
    assert d.run().commits == ()
    assert int(s.host.count_nonzero()) == 0


def test_cancel_too_late_reports_done(make_setup: Any) -> None:
    s: Setup = make_setup(sync=True)
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    out = d.run(
        swap_out=[SwapOut(seq=5, copies=(rc(0, 4, 3),), lease_id="R1")], cancel_swap_out=[5]
    )
    assert list(out.result.swap_out_cancelled) == []
    assert [w.seq for w in out.commits] == [5] and out.releases == ()


def test_bad_orders_are_seq_errors_and_release_leases(make_setup: Any) -> None:
    s: Setup = make_setup()
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    out = d.run(
        start=[SeqStart(seq=7, blocks=runs((99, 1)))],  # fails: its swap-in is not started
        swap_in=[
            SwapIn(seq=6, copies=(rc(30, 0, 1),), lease_id="P6"),  # past the pool
            SwapIn(seq=7, copies=(rc(5, 0, 1),), lease_id="P7"),
        ],
        swap_out=[SwapOut(seq=5, copies=(rc(0, 15, 3),), lease_id="R5")],  # past the arena
    )
    errors = {e.seq: e.message for e in out.result.errors}
    assert set(errors) == {5, 6, 7}
    assert "outside the arena" in errors[5] and "outside the pool" in errors[6]
    assert sorted(out.releases) == ["P6", "P7", "R5"] and out.commits == ()
    assert s.swaps.in_flight == 0 and not d.executor.engine.has_seq(5)


def test_without_a_store_swaps_are_errors(tiny: Any) -> None:
    spec, model = tiny
    d = Driver(StepExecutor(Engine(model, spec, new_pool(spec, model, 8, BLOCK))))
    out = d.run(swap_out=[SwapOut(seq=1, copies=(rc(0, 0, 1),), lease_id="R1")])
    assert [e.seq for e in out.result.errors] == [1]
    assert "without a KV store" in out.result.errors[0].message
    assert out.releases == () and out.commits == ()


def test_an_unknown_sequence_fails_alone_and_the_rest_of_the_step_runs(
    tiny: Any, reference: list[int]
) -> None:
    """A plan made ahead may decode a sequence the step before failed and forgot: only that
    sequence fails, the others in the forward sample as if it were not there."""
    spec, model = tiny
    d = Driver(StepExecutor(Engine(model, spec, new_pool(spec, model, 8, BLOCK))))
    first = d.run(
        start=[SeqStart(seq=1, blocks=runs((0, 4)))], prefill=[PrefillChunk(1, PROMPT, True)]
    ).result
    out = d.run(decode=[7, 1]).result
    assert [(e.seq, e.message) for e in out.errors] == [(7, "unknown sequence 7")]
    assert out.seqs == (1,) and [first.tokens[0], out.tokens[0]] == reference[:2]


def test_reset_waits_and_returns_leases(make_setup: Any) -> None:
    s: Setup = make_setup()
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    with s.swaps._lock:
        d.run(swap_out=[SwapOut(seq=5, copies=(rc(0, 0, 3),), lease_id="R1")])
        d.run(swap_in=[SwapIn(seq=9, copies=(rc(10, 5, 1),), lease_id="P9")])
    assert sorted(d.executor.reset()) == ["P9", "R1"]
    assert s.swaps.in_flight == 0 and d.executor.engine.num_seqs == 0
    assert d.run().commits == ()


# ------------------------------------------------------------- with a real KV store


@dataclass
class StoreUnderTest:
    stub: kv_grpc.KVStoreStub
    store: Store
    now: list[float]


@pytest.fixture
async def kvstore(tiny: Any) -> AsyncIterator[StoreUnderTest]:
    spec, model = tiny
    block_bytes = new_pool(spec, model, 1, BLOCK).block_bytes
    now = [1000.0]
    store = Store("fastswitch-test-arena", 16 * block_bytes, clock=lambda: now[0])
    service = GrpcService("kvstore-test", listen="127.0.0.1:0", metrics_port=None)
    service.add(kv_grpc.add_KVStoreServicer_to_server, KVStoreServicer(store), SERVICE_NAME)
    await service.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}") as channel:
            stub = kv_grpc.KVStoreStub(channel)
            await stub.RegisterWorker(
                kv.RegisterWorkerRequest(
                    worker_id="w0",
                    model_fingerprint=spec.fingerprint,
                    block_bytes=block_bytes,
                    device="cpu",
                    pool_kind="shm",
                    pool_handle=b"fastswitch-test-pool",
                    pool_blocks=24,
                )
            )
            yield StoreUnderTest(stub, store, now)
    finally:
        await service.stop(grace_s=0)
        store.check_integrity()


def copies_into(extents: Sequence[kv.Extent], device_start: int) -> tuple[RunCopy, ...]:
    out, d = [], device_start
    for e in extents:
        out.append(rc(d, e.start, e.count))
        d += e.count
    return tuple(out)


async def test_commit_before_done_then_pin_swap_in_release(
    make_setup: Any, reference: list[int], kvstore: StoreUnderTest
) -> None:
    s: Setup = make_setup()
    d = s.driver
    tokens = prefill_and_decode(d, 5, runs((0, 3)))
    res = await kvstore.stub.Reserve(kv.ReserveRequest(num_blocks=3))
    hashes = [b"a", b"b", b"c"]
    out = d.run(
        drop=[5],
        swap_out=[
            SwapOut(
                seq=5,
                copies=copies_into(res.extents, 0),
                lease_id=res.lease_id,
                block_hashes=tuple(hashes),
            )
        ],
    )
    result = await settle_swaps(kvstore.stub, d.until_swaps_done(out, "out"))
    assert list(result.swap_out_done) == [5] and not result.errors
    host_blocks = list((await kvstore.stub.Lookup(kv.LookupRequest(block_hashes=hashes))).blocks)
    assert len(host_blocks) == 3  # committed: visible and pinnable
    pin = await kvstore.stub.Pin(kv.PinRequest(blocks=host_blocks))
    assert kvstore.store.stats().pinned_blocks == 3

    into = d.run(
        start=[
            SeqStart(
                seq=5,
                position=len(PROMPT) + BEFORE - 1,
                last_token=tokens[-1],
                num_generated=len(tokens),
                blocks=runs((10, 4)),  # + one fresh block
            )
        ],
        swap_in=[
            SwapIn(
                seq=5,
                copies=tuple(rc(10 + i, b, 1) for i, b in enumerate(host_blocks)),
                lease_id=pin.lease_id,
            )
        ],
    )
    result = await settle_swaps(kvstore.stub, d.until_swaps_done(into, "in"))
    assert list(result.swap_in_done) == [5]
    assert kvstore.store.stats().pinned_blocks == 0  # the pin was released
    tokens += d.decode(5, AFTER)
    assert tokens == reference


async def test_commit_failure_is_a_failed_swap_out(
    make_setup: Any, kvstore: StoreUnderTest
) -> None:
    """A refused commit is reported in swap_out_failed, not as an error: the sequence stays on
    the worker (the scheduler decides), and the reservation is not committed."""
    s: Setup = make_setup(sync=True)
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    prefill_and_decode(d, 6, runs((4, 3)))
    expiring = await kvstore.stub.Reserve(kv.ReserveRequest(num_blocks=3, lease_s=1))
    kept = await kvstore.stub.Reserve(kv.ReserveRequest(num_blocks=3))
    kvstore.now[0] += 5
    kvstore.store.expire()
    out = d.run(
        swap_out=[
            SwapOut(seq=5, copies=copies_into(expiring.extents, 0), lease_id=expiring.lease_id),
            SwapOut(seq=6, copies=copies_into(kept.extents, 4), lease_id=kept.lease_id),
        ],
    )
    result = await settle_swaps(kvstore.stub, out)
    assert list(result.swap_out_done) == [6]
    assert list(result.swap_out_failed) == [5] and not result.errors
    assert d.executor.engine.has_seq(5)
    assert kvstore.store.stats().committed_blocks == 3


async def test_cancelled_reservation_is_released(make_setup: Any, kvstore: StoreUnderTest) -> None:
    s: Setup = make_setup()
    d = s.driver
    prefill_and_decode(d, 5, runs((0, 3)))
    res = await kvstore.stub.Reserve(kv.ReserveRequest(num_blocks=3))
    with s.swaps._lock:
        out = d.run(
            swap_out=[SwapOut(seq=5, copies=copies_into(res.extents, 0), lease_id=res.lease_id)],
            cancel_swap_out=[5],
        )
    result = await settle_swaps(kvstore.stub, out)
    assert list(result.swap_out_cancelled) == [5]
    stats = kvstore.store.stats()
    assert stats.reserved_blocks == 0 and stats.free_blocks == stats.num_host_blocks


# ------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sync", [False, True])
def test_cuda_round_trip_pinned_arena(reference: list[int], sync: bool) -> None:
    """The same round trip on CUDA: shm arena page-locked, copies on the side stream.

    Compared with the CPU reference run: the tiny model in fp32 keeps its greedy margins on
    either device (tests/worker/test_invariance.py checks them)."""
    from worker_svc.loader import load_model

    spec, model = load_model("tiny", device=torch.device("cuda"))
    pool = new_pool(spec, model, 24, BLOCK)
    arena = ArenaLayout(pool.block_bytes, 16)
    name = f"fastswitch-test-{uuid.uuid4().hex[:12]}"
    try:
        with shm.create(name, arena.used_bytes) as buf:
            host = arena.blocks_view(buf)
            swaps = SwapEngine(pool, host, sync=sync)
            try:
                assert host.is_pinned()
                d = Driver(StepExecutor(Engine(model, spec, pool), swaps))
                tokens = prefill_and_decode(d, 5, runs((3, 2), (8, 1)))
                out = d.run(drop=[5], swap_out=[SwapOut(seq=5, copies=(rc(3, 10, 2), rc(8, 2, 1)))])
                assert d.until_swaps_done(out, "out").commits[0].host_blocks == (10, 11, 2)
                pool.tensor[[3, 4, 8]] = 0
                into = d.run(
                    start=[
                        SeqStart(
                            seq=5,
                            position=len(PROMPT) + BEFORE - 1,
                            last_token=tokens[-1],
                            num_generated=len(tokens),
                            blocks=runs((12, 1), (20, 2), (6, 1)),  # + one fresh block
                        )
                    ],
                    swap_in=[SwapIn(seq=5, copies=(rc(12, 10, 1), rc(20, 11, 1), rc(21, 2, 1)))],
                )
                assert list(d.until_swaps_done(into, "in").result.swap_in_done) == [5]
                tokens += d.decode(5, AFTER)
                assert tokens == reference
            finally:
                swaps.close()
            assert not host.is_pinned()
            del host
    finally:
        shm.remove_stale(name)
