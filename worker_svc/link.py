"""The worker's end of the step stream: join the scheduler, then plan in → result out, forever.

The worker dials the scheduler (so workers can join and leave while the system runs). If the
stream breaks, every sequence is forgotten (the scheduler recomputes them), the KV store leases
of swaps in flight are released, and the worker dials again with backoff. A rejection (another
model, a duplicate id) is fatal: LinkRejected.

Each step runs on the step thread (``StepExecutor.run``); its KV store bookkeeping runs here, on
the event loop, before the result is sent (``settle_swaps``): finished swap-outs are committed
first and only then reported in ``swap_out_done`` (the scheduler pins committed blocks only);
leases the step no longer needs are released in the same round of concurrent calls.

Plans are read as they come, not one per result: a scheduler that plans ahead (asynchronous
scheduling) has step N+1 here while step N runs, and the step thread starts it the moment N
ends, while N's result is settled and sent. Steps run, and results go back, in plan order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import NamedTuple, TypeAlias

import grpc

from proto import kvstore_pb2 as kv
from proto import kvstore_pb2_grpc as kv_grpc
from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from servekit.planes import OPEN_PLANE, InternalPlane
from worker_svc.convert import hello_to_proto, plan_from_proto, result_to_proto
from worker_svc.executor import StepExecutor, StepOutcome
from worker_svc.plan import (
    CommittedBlocks,
    SeqError,
    StepPlan,
    StepResult,
    SwapIn,
    SwapOut,
    WorkerHello,
)
from worker_svc.store_client import StoreConnection, lease_instance
from worker_svc.swap_engine import SwapDone

log = logging.getLogger(__name__)

_FATAL = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,  # a wrong deployment secret does not heal by redialing
    grpc.StatusCode.UNIMPLEMENTED,  # not a worker plane: e.g. the scheduler's public port
)
_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: " (check the deployment secret)",
    grpc.StatusCode.UNIMPLEMENTED: (
        " (is --scheduler the scheduler's public --listen? workers dial its --internal-listen)"
    ),
}


# The worker's end of StepLink.Connect.
_StepCall: TypeAlias = grpc.aio.StreamStreamCall[wk.WorkerMessage, wk.SchedulerMessage]


class _Submitted(NamedTuple):
    """A plan handed to the step thread: its future ``(outcome, began, ended)``, and the swaps
    taken out of it because the KV store's arena was unreachable (reported refused)."""

    future: asyncio.Future[tuple[StepOutcome, float, float]]
    refused: StepPlan | None


class LinkRejected(RuntimeError):
    """The scheduler refused this worker for good (the message says why)."""


class SchedulerLink:
    """The worker's one connection to the scheduler (see the module docstring).

    Owned by ``server.serve``; ``run`` is its only task. Owns the step thread: the executor's
    ``run`` and ``reset`` happen there, one at a time, in the order the plans arrive, and
    every plan is answered by exactly one result, in order. ``on_state(True)`` once the
    scheduler has accepted the worker, ``on_state(False)`` whenever the stream is lost;
    ``on_step`` sees each result after it was sent, with the swaps that step found finished.
    """

    def __init__(
        self,
        scheduler: str,
        hello: WorkerHello,
        executor: StepExecutor,
        *,
        on_state: Callable[[bool], None],
        on_step: Callable[[StepResult, tuple[SwapDone, ...]], None] | None = None,
        store: StoreConnection | None = None,
        max_backoff_s: float = 2.0,
        plane: InternalPlane = OPEN_PLANE,
    ) -> None:
        self._target = scheduler
        self._plane = plane
        self._hello = hello
        self._executor = executor
        self._on_state = on_state
        self._on_step = on_step
        self._conn = store
        self._store = None if store is None else store.stub
        self._max_backoff_s = max_backoff_s
        # Steps run on one thread of their own: torch releases the GIL, the loop stays live.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastswitch-step")

    async def run(self, stop: asyncio.Event) -> None:
        """Keeps the worker joined until `stop` is set. Raises LinkRejected."""
        backoff = 0.05
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    backoff = 0.05
                except grpc.aio.AioRpcError as err:
                    if err.code() in _FATAL:
                        hint = _HINTS.get(err.code(), "")
                        raise LinkRejected(f"{err.code().name}: {err.details()}{hint}") from err
                    log.info("scheduler unreachable", extra={"why": err.code().name})
                finally:
                    self._on_state(False)
                    await self._reset()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    backoff = min(backoff * 2, self._max_backoff_s)
        finally:
            self._thread.shutdown(wait=True)

    async def _session(self, stop: asyncio.Event) -> None:
        """One stream: plans are read and handed to the step thread as they come (``_receive``)
        while results are settled and sent in plan order (``_answer``), so a plan the scheduler
        made ahead starts the moment the step before it ends. Ends when the scheduler closes
        the stream, `stop` is set, or either side fails (its error is raised); the steps still
        queued then are waited for and their leases released (``_abandon``)."""
        async with self._plane.channel(self._target) as channel:
            call = wk_grpc.StepLinkStub(channel).Connect()
            queue: asyncio.Queue[_Submitted] = asyncio.Queue()
            answering: list[_Submitted] = []  # the step whose result is being settled and sent
            await call.write(wk.WorkerMessage(hello=hello_to_proto(self._hello)))
            tasks = [
                asyncio.create_task(self._receive(call, queue)),
                asyncio.create_task(self._answer(call, queue, answering)),
                asyncio.create_task(stop.wait()),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # the first failure, if any
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                call.cancel()
                left = answering + [queue.get_nowait() for _ in range(queue.qsize())]
                await self._abandon(left)

    async def _receive(self, call: _StepCall, queue: asyncio.Queue[_Submitted]) -> None:
        """Reads the stream: each plan goes to the step thread at once, in arrival order (its
        single thread runs them one after another). Returns when the scheduler closes."""
        loop = asyncio.get_running_loop()
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF or msg.HasField("goodbye"):
                log.info("scheduler closed the step stream")
                return
            if msg.HasField("accepted"):
                log.info("joined the scheduler", extra={"scheduler": self._target})
                self._on_state(True)
                continue
            plan, refused = await self._prepare_store(plan_from_proto(msg.plan))
            future = loop.run_in_executor(self._thread, self._timed_run, plan)
            queue.put_nowait(_Submitted(future, refused))

    async def _answer(
        self, call: _StepCall, queue: asyncio.Queue[_Submitted], answering: list[_Submitted]
    ) -> None:
        """Sends each step's result, in plan order, once the step is done and its swaps are
        settled with the KV store (``settle_swaps``). ``idle_s`` is the step thread's wait
        before the step began: the time the worker waited on the scheduler."""
        last_end: float | None = None
        while True:
            item = await queue.get()
            answering.append(item)
            outcome, began, ended = await item.future
            result = await settle_swaps(self._store, outcome)
            if item.refused is not None:
                result = _with_refused(result, item.refused)
            idle = 0.0 if last_end is None else max(0.0, began - last_end)
            last_end = ended
            result = replace(result, timing=replace(result.timing, idle_s=idle))
            await call.write(wk.WorkerMessage(result=result_to_proto(result)))
            answering.clear()
            if self._on_step is not None:
                self._on_step(result, outcome.swaps)

    def _timed_run(self, plan: StepPlan) -> tuple[StepOutcome, float, float]:
        """The executor's step on the step thread, with when it began and ended there."""
        began = time.perf_counter()
        outcome = self._executor.run(plan)
        return outcome, began, time.perf_counter()

    async def _abandon(self, steps: list[_Submitted]) -> None:
        """Steps whose results will never be sent (the stream is gone): waits for each, then
        releases every lease its outcome still holds (swap-outs it would have committed,
        pins and reservations it was done with), so nothing waits for the leases to expire."""
        leases: list[str] = []
        for item in steps:
            try:
                outcome, _, _ = await item.future
            except Exception:  # the step itself failed: reset() cleans the executor up
                log.exception("a step abandoned with the stream failed")
                continue
            leases += [w.lease_id for w in outcome.commits if w.lease_id]
            leases += outcome.releases
        if leases and self._store is not None:
            await release_leases(self._store, leases, timeout_s=1.0)

    async def _prepare_store(self, plan: StepPlan) -> tuple[StepPlan, StepPlan | None]:
        """Before a step: installs a restarted store's arena if one was mapped, and checks that
        a step with swaps can reach the store's current arena (registering again if it was
        replaced). When it cannot, the swaps are taken out of the plan and returned, to be
        reported refused (the scheduler recomputes those requests); so are the swaps whose
        lease a store lifetime since ended granted (planned before the scheduler knew of the
        restart: copying for them would write into, or read from, the new arena's blocks)."""
        conn = self._conn
        if conn is None:
            return plan, None
        swaps = bool(plan.swap_in or plan.swap_out)
        ok = await conn.ensure_fresh() if swaps else True
        new = conn.take_replacement()
        if new is not None:
            loop = asyncio.get_running_loop()
            old = await loop.run_in_executor(self._thread, self._executor.replace_swaps, new)
            await loop.run_in_executor(self._thread, conn.retire, old)
        if not swaps:
            return plan, None
        orders: tuple[SwapIn | SwapOut, ...] = (*plan.swap_in, *plan.swap_out)
        if not ok:
            log.warning(
                "KV store arena unavailable; swaps refused",
                extra={"swap_in": len(plan.swap_in), "swap_out": len(plan.swap_out)},
            )
            leases = [o.lease_id for o in orders if o.lease_id]
            if leases and self._store is not None:
                await release_leases(self._store, leases, timeout_s=1.0)
            return _without_swaps(plan, {o.seq for o in orders})
        stale = {
            o.seq for o in orders if o.lease_id and lease_instance(o.lease_id) != conn.instance
        }
        if not stale:
            return plan, None
        log.warning("swaps for a restarted KV store's leases refused", extra={"n": len(stale)})
        return _without_swaps(plan, stale)

    async def _reset(self) -> None:
        """Forgets every sequence (on the step thread, after any step still running) and
        releases the leases of the swaps that were in flight."""
        loop = asyncio.get_running_loop()
        leases = await loop.run_in_executor(self._thread, self._executor.reset)
        if leases and self._store is not None:
            await release_leases(self._store, list(leases))


async def settle_swaps(
    store: kv_grpc.KVStoreStub | None, outcome: StepOutcome, *, timeout_s: float = 5.0
) -> StepResult:
    """``outcome.result`` completed with the KV store: commits every finished swap-out and then
    reports it in ``swap_out_done`` (or in ``swap_out_failed`` when the commit fails, e.g. an
    expired lease or a store that died: the sequence stays here with its device blocks intact,
    the scheduler recomputes or frees it) and releases ``outcome.releases``. All calls run
    concurrently; a failed release is only logged (the lease expires on its own)."""
    result = outcome.result
    if not outcome.commits and not outcome.releases:
        return result
    if store is None:
        raise RuntimeError("swaps finished on a worker without a KV store")
    commits = [w for w in outcome.commits if w.host_blocks]
    done = [w.seq for w in outcome.commits if not w.host_blocks]
    failed: list[int] = []
    committed: list[CommittedBlocks] = []
    calls = [
        store.Commit(
            kv.CommitRequest(
                lease_id=w.lease_id or "",
                blocks=w.host_blocks,
                block_hashes=[h or b"" for h in w.block_hashes],
                tenant=w.tenant or "",
                ttl_s=w.ttl_s or 0.0,
            ),
            timeout=timeout_s,
        )
        for w in commits
    ]
    releases = list(outcome.releases)
    calls += [
        store.Release(kv.ReleaseRequest(lease_id=lease), timeout=timeout_s) for lease in releases
    ]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    abandoned: list[str] = []
    for w, answer in zip(commits, answers, strict=False):
        if isinstance(answer, grpc.aio.AioRpcError):
            log.warning(
                "commit of swapped-out KV failed",
                extra={"seq": w.seq, "why": f"{answer.code().name}: {answer.details()}"},
            )
            failed.append(w.seq)
            if w.lease_id is not None and answer.code() != grpc.StatusCode.NOT_FOUND:
                abandoned.append(w.lease_id)  # (NOT_FOUND: the lease is gone)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            done.append(w.seq)
            if tuple(answer.blocks) != w.host_blocks:  # duplicates of retained blocks
                committed.append(CommittedBlocks(w.seq, tuple(answer.blocks)))
    _log_release_failures(releases, answers[len(commits) :])
    if abandoned:  # a reservation left half-committed: give its blocks back now
        await release_leases(store, abandoned, timeout_s=timeout_s)
    return replace(
        result,
        swap_out_done=result.swap_out_done + tuple(done),
        swap_out_failed=result.swap_out_failed + tuple(failed),
        committed=result.committed + tuple(committed),
    )


async def release_leases(
    store: kv_grpc.KVStoreStub, leases: list[str], *, timeout_s: float = 5.0
) -> None:
    """Ends ``leases`` concurrently; a failed release is only logged (it expires on its own)."""
    answers = await asyncio.gather(
        *(store.Release(kv.ReleaseRequest(lease_id=lease), timeout=timeout_s) for lease in leases),
        return_exceptions=True,
    )
    _log_release_failures(leases, answers)


def _log_release_failures(leases: list[str], answers: list[object]) -> None:
    for lease, answer in zip(leases, answers, strict=True):
        if isinstance(answer, grpc.aio.AioRpcError):
            log.warning("lease release failed", extra={"lease": lease, "why": answer.code().name})
        elif isinstance(answer, BaseException):
            raise answer


def _without_swaps(plan: StepPlan, seqs: set[int]) -> tuple[StepPlan, StepPlan]:
    """`plan` without the swaps of `seqs` (a swapped-in sequence is not started either), and
    those swaps as a plan of their own, to be reported refused (``_with_refused``)."""
    refused_in = {o.seq for o in plan.swap_in if o.seq in seqs}
    kept = replace(
        plan,
        swap_in=tuple(o for o in plan.swap_in if o.seq not in seqs),
        swap_out=tuple(o for o in plan.swap_out if o.seq not in seqs),
        start=tuple(s for s in plan.start if s.seq not in refused_in),
        append=tuple(a for a in plan.append if a.seq not in refused_in),
    )
    refused = StepPlan(
        step_id=plan.step_id,
        swap_in=tuple(o for o in plan.swap_in if o.seq in seqs),
        swap_out=tuple(o for o in plan.swap_out if o.seq in seqs),
    )
    return kept, refused


def _with_refused(result: StepResult, refused: StepPlan) -> StepResult:
    """``result`` plus the swaps of ``refused`` reported as refused: a swap-out as not committed
    (its device blocks were never read), a swap-in as an error (its sequence was never started)."""
    message = "the KV store's arena is unavailable: swap refused"
    return replace(
        result,
        swap_out_failed=result.swap_out_failed + tuple(o.seq for o in refused.swap_out),
        errors=result.errors + tuple(SeqError(o.seq, message) for o in refused.swap_in),
    )
