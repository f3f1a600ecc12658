"""Executes one step plan against the engine: the worker's step, readable at a glance.

    forget dropped sequences → start / grow block tables → submit swap-ins → submit swap-outs
    → cancel swap-outs → forward → collect finished swaps

It never decides allocation or admission: every block id, every copy and every token comes in
the plan. Per-sequence faults (a plan naming an unknown sequence, say) are reported in the
result and the rest of the step still runs; only a fault of the whole forward fails every
sequence in it.

Swaps (docs/architecture.md, swap rules 1-4). The scheduler guarantees, and this module relies on:

* a sequence swapping in is in no forward until its swap-in is reported in ``swap_in_done``
  (so the forward never reads blocks still being written);
* a sequence swapping out keeps its device blocks allocated, and nothing writes them, until its
  swap-out is reported in ``swap_out_done`` or ``swap_out_cancelled`` (so the copy reads stable
  bytes and no other sequence reuses the blocks under it).

In return the executor reports each swap exactly once, in the result of the step during which
it was seen complete: in sync mode that is the step that submitted it (copies finish before the
forward, ``timing.swap_wait_s`` says how long they took); in async mode it is the first step
whose end finds it finished, so the scheduler keeps sending plans, with or without compute,
while it waits. ``cancel_swap_out`` reports the sequence in ``swap_out_cancelled`` only when the
copy had not started (nothing was written); otherwise the swap-out finishes and is reported done.

KV store bookkeeping is the caller's (link.py, on the event loop), from the ``StepOutcome``:

* ``commits``: finished swap-outs. Their host blocks (in copy order) must be committed under the
  plan's lease and hashes *before* the sequence is reported in ``swap_out_done`` (the scheduler
  pins them later, and only committed blocks can be pinned); a failed commit reports the
  sequence in ``swap_out_failed`` instead (the sequence and its blocks stay as they are).
* ``releases``: leases to end: pins of finished swap-ins, reservations of cancelled, refused or
  failed swap-outs, pins of refused or failed swap-ins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from servekit.runs import BlockRun
from worker_svc.engine import Engine, SamplingParams
from worker_svc.plan import (
    RunCopy,
    SeqError,
    StepPlan,
    StepResult,
    StepTiming,
)
from worker_svc.swap_engine import Direction, SwapCompletions, SwapDone, SwapEngine

log = logging.getLogger(__name__)

NO_STORE = "this worker was started without a KV store: no swaps"


def _block_ids(runs: Iterable[BlockRun]) -> list[int]:
    return [b for r in runs for b in r.blocks()]


def _host_blocks(copies: Iterable[RunCopy]) -> tuple[int, ...]:
    return tuple(b for r in copies for b in range(r.host_start, r.host_start + r.count))


class SwapOutWritten(NamedTuple):
    """A finished swap-out: commit ``host_blocks`` under ``lease_id``, then report ``seq``."""

    seq: int
    lease_id: str | None
    host_blocks: tuple[int, ...]  # in copy order
    block_hashes: tuple[bytes | None, ...]  # parallel to host_blocks (None: private), or empty
    tenant: str | None = None  # charged for the retained blocks
    ttl_s: float | None = None  # retention hint


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """``result`` is final except for the sequences in ``commits`` (see the module docstring);
    ``swaps``: the swaps this step found finished, one each (for the metrics)."""

    result: StepResult
    commits: tuple[SwapOutWritten, ...] = ()
    releases: tuple[str, ...] = ()
    swaps: tuple[SwapDone, ...] = ()


@dataclass(slots=True)
class _StepWork:
    """What one step gathers before its result is built."""

    failed: dict[int, str] = field(default_factory=dict)  # seq -> why
    sampled: dict[int, int] = field(default_factory=dict)  # seq -> token
    cancelled: list[int] = field(default_factory=list)
    swapped_in: list[int] = field(default_factory=list)
    commits: list[SwapOutWritten] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)

    def release(self, lease_id: str | None) -> None:
        if lease_id is not None:
            self.releases.append(lease_id)


class StepExecutor:
    """Runs the scheduler's step plans on one worker: owns the engine (each sequence's
    execution state) and the bookkeeping of the swaps in flight (which lease each holds).

    Called by the scheduler link, one ``run`` at a time on its step thread; ``reset`` after the
    link is lost. It never allocates: every block id, copy and token comes in the plan. Each
    swap submitted is reported exactly once, done, cancelled or failed, and its lease is
    handed back (in ``releases`` or ``commits``) exactly once (see the module docstring).
    """

    def __init__(self, engine: Engine, swaps: SwapEngine | None = None) -> None:
        self.engine = engine
        self.swaps = swaps
        self.steps = 0
        self.swap_out_bytes = 0
        self.swap_in_bytes = 0
        self._outs: dict[int, SwapOutWritten] = {}  # swap-outs in flight, by seq
        self._ins: dict[int, str | None] = {}  # swap-ins in flight: seq -> pin lease
        self._carried: SwapCompletions | None = None  # a replaced engine's last completions

    def replace_swaps(self, swaps: SwapEngine) -> SwapEngine | None:
        """Installs a new swap engine (a restarted store's arena) between steps; returns the old
        one for its owner to close. The old engine's jobs are waited for and reported with the
        next step as usual (a swap-out's commit then fails against the new store: the scheduler
        recomputes it; a swap-in read the old arena, still mapped, and is done)."""
        old = self.swaps
        if old is not None:
            old.wait_all()
            self._carried = _merge(self._carried, old.poll())
        self.swaps = swaps
        return old

    def reset(self) -> tuple[str, ...]:
        """Forgets every sequence (the scheduler went away; it will recompute them). Waits for
        the swaps in flight and returns the leases they held, for the caller to release."""
        leases: list[str | None] = []
        self._carried = None
        if self.swaps is not None:
            self.swaps.wait_all()
            self.swaps.poll()
            leases = [w.lease_id for w in self._outs.values()] + list(self._ins.values())
            self._outs.clear()
            self._ins.clear()
        e = self.engine
        self.engine = Engine(e.model, e.spec, e.pool)
        return tuple(lease for lease in leases if lease is not None)

    def run(self, plan: StepPlan) -> StepOutcome:
        t0 = time.perf_counter()
        work = _StepWork()
        self._apply_table_changes(plan, work)
        swap_wait_s = self._start_swaps(plan, work)
        t1 = time.perf_counter()
        self._forward(plan, work)
        t2 = time.perf_counter()
        done = self._collect_swaps(work)
        for seq in work.failed:
            if self.engine.has_seq(seq):
                self.engine.drop_seq(seq)
        self.steps += 1
        result = StepResult(
            step_id=plan.step_id,
            seqs=tuple(work.sampled),
            tokens=tuple(work.sampled.values()),
            swap_in_done=tuple(work.swapped_in),
            swap_out_cancelled=tuple(work.cancelled),
            errors=tuple(SeqError(seq, message) for seq, message in work.failed.items()),
            swap_out_bytes=done.out_bytes,
            swap_in_bytes=done.in_bytes,
            swap_copies=done.copies,
            timing=StepTiming(
                forward_s=t2 - t1, step_s=time.perf_counter() - t0, swap_wait_s=swap_wait_s
            ),
        )
        return StepOutcome(result, tuple(work.commits), tuple(work.releases), done.jobs)

    def _apply_table_changes(self, plan: StepPlan, work: _StepWork) -> None:
        engine = self.engine
        for seq in plan.drop:
            if engine.has_seq(seq):
                engine.drop_seq(seq)
        for s in plan.start:
            try:
                engine.start_seq(
                    s.seq,
                    SamplingParams(*s.sampling),
                    position=s.position,
                    last_token=s.last_token,
                    num_generated=s.num_generated,
                )
                engine.append_blocks(s.seq, _block_ids(s.blocks))
            except ValueError as err:
                work.failed[s.seq] = str(err)
        for a in plan.append:
            try:
                engine.append_blocks(a.seq, _block_ids(a.blocks))
            except ValueError as err:
                work.failed[a.seq] = str(err)

    def _start_swaps(self, plan: StepPlan, work: _StepWork) -> float:
        """Submits swap-ins, then swap-outs, then cancels; returns the seconds the step spent
        here (sync mode: the copies themselves; async: handing them to the copy thread)."""
        swaps = self.swaps
        failed = work.failed
        if swaps is None:
            for seq in [o.seq for o in plan.swap_in] + [o.seq for o in plan.swap_out]:
                failed[seq] = NO_STORE
            return 0.0
        started = time.perf_counter()
        for sin in plan.swap_in:
            if sin.seq in failed:
                work.release(sin.lease_id)
                continue
            try:
                swaps.submit_in(sin.seq, sin.copies)
                self._ins[sin.seq] = sin.lease_id
            except ValueError as err:
                failed[sin.seq] = str(err)
                work.release(sin.lease_id)
        for sout in plan.swap_out:
            if sout.seq in failed:
                work.release(sout.lease_id)
                continue
            try:
                swaps.submit_out(sout.seq, sout.copies)
            except ValueError as err:
                failed[sout.seq] = str(err)
                work.release(sout.lease_id)
                continue
            blocks = tuple(
                b for r in sout.copies for b in range(r.host_start, r.host_start + r.count)
            )
            self._outs[sout.seq] = SwapOutWritten(
                sout.seq, sout.lease_id, blocks, sout.block_hashes, sout.tenant, sout.ttl_s
            )
        for seq in plan.cancel_swap_out:
            if swaps.cancel_out(seq):
                work.cancelled.append(seq)
                work.release(self._outs.pop(seq).lease_id)
        return time.perf_counter() - started

    def _forward(self, plan: StepPlan, work: _StepWork) -> None:
        """One forward over the prefills and decodes of known sequences not failed so far; a
        fault of the forward fails every sequence in it."""
        failed = work.failed
        for seq in [c.seq for c in plan.prefill] + list(plan.decode):
            if seq not in failed and not self.engine.has_seq(seq):
                # A plan made ahead (asynchronous scheduling) may still compute a sequence the
                # step before failed and forgot: that sequence fails, not the whole forward.
                failed[seq] = f"unknown sequence {seq}"
        prefills = [c for c in plan.prefill if c.seq not in failed]
        decodes = [s for s in plan.decode if s not in failed]
        if not prefills and not decodes:
            return
        try:
            work.sampled = self.engine.execute(prefills, decodes)
        except ValueError as err:
            log.error("step failed", extra={"step": plan.step_id, "why": str(err)})
            for seq in [c.seq for c in prefills] + decodes:
                failed[seq] = f"step {plan.step_id} failed: {err}"

    def _collect_swaps(self, work: _StepWork) -> SwapCompletions:
        """Moves the swaps finished so far into ``work`` (swap-outs via ``work.commits``)."""
        if self.swaps is None:
            return SwapCompletions()
        done = _merge(self._carried, self.swaps.poll())
        self._carried = None
        for seq in done.swapped_out:
            work.commits.append(self._outs.pop(seq))
        for seq in done.swapped_in:
            work.swapped_in.append(seq)
            work.release(self._ins.pop(seq))
        for f in done.failed:
            work.failed[f.seq] = f.message
            if f.direction is Direction.OUT:
                work.release(self._outs.pop(f.seq).lease_id)
            else:
                work.release(self._ins.pop(f.seq))
        self.swap_out_bytes += done.out_bytes
        self.swap_in_bytes += done.in_bytes
        return done


def _merge(first: SwapCompletions | None, then: SwapCompletions) -> SwapCompletions:
    """Both sets of completions as one (``first`` may be None)."""
    if first is None:
        return then
    return SwapCompletions(
        first.swapped_out + then.swapped_out,
        first.swapped_in + then.swapped_in,
        first.failed + then.failed,
        first.out_bytes + then.out_bytes,
        first.in_bytes + then.in_bytes,
        first.copies + then.copies,
        first.jobs + then.jobs,
    )
