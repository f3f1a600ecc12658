"""Executes one step plan against the engine: the worker's step, readable at a glance.

    forget dropped sequences → start / grow block tables → swap-ins → forward → swap-outs

It never decides allocation or admission: every block id and every token comes in the plan.
Per-sequence faults (a plan naming an unknown sequence, say) are reported in the result and the
rest of the step still runs; only a fault of the whole forward fails every sequence in it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from proto import worker_pb2 as wk
from worker_svc.engine import Engine, PrefillChunk, SamplingParams

log = logging.getLogger(__name__)


def _block_ids(runs: Iterable[wk.Run]) -> list[int]:
    return [b for r in runs for b in range(r.start, r.start + r.count)]


def _sampling(s: wk.WorkerSampling) -> SamplingParams:
    return SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p or 1.0,
        top_k=s.top_k,
        seed=s.seed if s.HasField("seed") else None,
    )


class StepExecutor:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps = 0

    def reset(self) -> None:
        """Forgets every sequence (the scheduler went away; it will recompute them)."""
        e = self.engine
        self.engine = Engine(e.model, e.spec, e.pool)

    def run(self, plan: wk.StepPlan) -> wk.StepResult:
        t0 = time.perf_counter()
        result = wk.StepResult(step_id=plan.step_id)
        failed: dict[int, str] = {}
        self._apply_table_changes(plan, failed)
        if plan.swap_in or plan.swap_out or plan.cancel_swap_out:
            for order in [*plan.swap_in, *plan.swap_out]:
                failed[order.seq] = "this worker was started without a KV store: no swaps"
        prefills = [
            PrefillChunk(c.seq, list(c.token_ids), c.sample)
            for c in plan.prefill
            if c.seq not in failed
        ]
        decodes = [s for s in plan.decode if s not in failed]
        t1 = time.perf_counter()
        if prefills or decodes:
            try:
                sampled = self.engine.execute(prefills, decodes)
            except ValueError as err:
                log.error("step failed", extra={"step": plan.step_id, "why": str(err)})
                for seq in [c.seq for c in prefills] + decodes:
                    failed[seq] = f"step {plan.step_id} failed: {err}"
                sampled = {}
            result.seqs.extend(sampled.keys())
            result.tokens.extend(sampled.values())
        t2 = time.perf_counter()
        for seq, message in failed.items():
            result.errors.add(seq=seq, message=message)
            if self.engine.has_seq(seq):
                self.engine.drop_seq(seq)
        self.steps += 1
        result.timing.forward_s = t2 - t1
        result.timing.step_s = time.perf_counter() - t0
        return result

    def _apply_table_changes(self, plan: wk.StepPlan, failed: dict[int, str]) -> None:
        engine = self.engine
        for seq in plan.drop:
            if engine.has_seq(seq):
                engine.drop_seq(seq)
        for s in plan.start:
            try:
                engine.start_seq(
                    s.seq,
                    _sampling(s.sampling),
                    position=s.position,
                    last_token=s.last_token if s.HasField("last_token") else None,
                    num_generated=s.num_generated,
                )
                engine.append_blocks(s.seq, _block_ids(s.blocks))
            except ValueError as err:
                failed[s.seq] = str(err)
        for a in plan.append:
            try:
                engine.append_blocks(a.seq, _block_ids(a.blocks))
            except ValueError as err:
                failed[a.seq] = str(err)
