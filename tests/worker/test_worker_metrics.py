"""StepMetrics fed by a real executor and swap engine (CPU): steps, forward time, blocks free,
and each swap's bytes, copies and copy time by direction, labelled with model and worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from worker_svc.engine import Engine
from worker_svc.executor import StepExecutor, StepOutcome
from worker_svc.metrics import StepMetrics
from worker_svc.plan import BlockRun, PrefillChunk, RunCopy, SeqStart, StepPlan, SwapIn, SwapOut
from worker_svc.swap_engine import SwapEngine, SwapLayout

from .helpers import new_pool, prompt_of

LABELS = {"model": "tiny", "worker": "w9"}
NUM_BLOCKS = 24


class Fed:
    """An executor whose every outcome goes to StepMetrics, as link.py does."""

    def __init__(self, executor: StepExecutor, registry: CollectorRegistry) -> None:
        self.executor = executor
        self.registry = registry
        self.metrics = StepMetrics(registry, executor, model="tiny", worker="w9")
        self.step = 0

    def run(self, **fields: Any) -> StepOutcome:
        self.step += 1
        plan = StepPlan(step_id=self.step, **{k: tuple(v) for k, v in fields.items()})
        outcome = self.executor.run(plan)
        self.metrics.on_step(outcome.result, outcome.swaps)
        return outcome

    def until_reported(self, outcome: StepOutcome) -> None:
        if not outcome.swaps:
            assert self.executor.swaps is not None
            self.executor.swaps.wait_all()
            assert self.run().swaps  # the next (empty) step reports it

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {**LABELS, **labels})


@pytest.fixture
def fed(tiny: Any, request: pytest.FixtureRequest) -> Iterator[Fed]:
    layout, sync = request.param
    spec, model = tiny
    pool = new_pool(spec, model, NUM_BLOCKS, 16)
    host = torch.zeros(16, pool.block_bytes, dtype=torch.uint8)
    with SwapEngine(pool, host, layout=layout, sync=sync) as swaps:
        yield Fed(StepExecutor(Engine(model, spec, pool), swaps), CollectorRegistry())


MODES = [(layout, sync) for layout in SwapLayout for sync in (False, True)]


@pytest.mark.parametrize("fed", MODES, indirect=True, ids=lambda m: f"{m[0]}-{m[1]}")
def test_steps_and_swaps_are_counted_by_direction(fed: Fed) -> None:
    block_bytes = fed.executor.engine.pool.block_bytes
    assert fed.value("fastswitch_worker_kv_blocks_capacity") == NUM_BLOCKS
    first = fed.run(
        start=[SeqStart(seq=5, blocks=(BlockRun(3, 2), BlockRun(8, 1)))],
        prefill=[PrefillChunk(5, prompt_of(37), True)],
    )
    assert not first.result.errors
    assert fed.value("fastswitch_worker_kv_blocks_free") == NUM_BLOCKS - 3
    assert fed.value("fastswitch_worker_live_seqs") == 1
    assert fed.value("fastswitch_worker_forward_seconds_count") == 1
    assert fed.value("fastswitch_worker_forward_seconds_sum") == first.result.timing.forward_s

    out = fed.run(drop=[5], swap_out=[SwapOut(5, (RunCopy(3, 10, 2), RunCopy(8, 2, 1)))])
    fed.until_reported(out)
    assert fed.value("fastswitch_worker_kv_blocks_free") == NUM_BLOCKS
    per_layer = fed.executor.swaps is not None and fed.executor.swaps.layout is SwapLayout.PER_LAYER
    copies_out = 3 * 4 * 2 if per_layer else 2  # tiny: 4 layers, K and V; group: one per run
    assert fed.value("fastswitch_worker_swap_bytes_total", direction="out") == 3 * block_bytes
    assert fed.value("fastswitch_worker_swap_copies_total", direction="out") == copies_out
    assert fed.value("fastswitch_worker_swap_copy_seconds_count", direction="out") == 1
    assert fed.value("fastswitch_worker_swap_bytes_total", direction="in") == 0

    into = fed.run(
        start=[SeqStart(seq=6, blocks=(BlockRun(12, 1),))],
        swap_in=[SwapIn(6, (RunCopy(12, 10, 1),))],
    )
    fed.until_reported(into)
    assert fed.value("fastswitch_worker_swap_bytes_total", direction="in") == block_bytes
    assert fed.value("fastswitch_worker_swap_copy_seconds_count", direction="in") == 1
    spent = sum(
        fed.value("fastswitch_worker_swap_copy_seconds_sum", direction=d) or 0.0
        for d in ("out", "in")
    )
    assert spent == pytest.approx(fed.executor.swaps.copy_seconds)  # type: ignore[union-attr]
    assert fed.value("fastswitch_worker_steps_total") == fed.step
