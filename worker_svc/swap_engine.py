"""The swap engine: copies runs of KV blocks between the device pool and the host arena.

Both sides are seen as bytes, one row per block (docs/architecture.md, Memory layout)::

    device pool  uint8 [num_blocks, block_bytes]
    ┌──────┬──────┬──────┬──────┬──────┬── ...
    │  0   │  1   │  2   │  3   │  4   │
    └──────┴──────┴──────┴──────┴──────┴── ...
           └─── 3 blocks ───────┘
                   │  RunCopy(device_start=1, host_start=3, count=3): swap-out ▼, swap-in ▲
                   ▼
                         ┌─── 3 blocks ───────┐
    ┌──────┬──────┬──────┬──────┬──────┬──────┬──────┬── ...
    │  0   │  1   │  2   │  3   │  4   │  5   │  6   │
    └──────┴──────┴──────┴──────┴──────┴──────┴──────┴── ...
    host arena  uint8 [num_host_blocks, block_bytes]   (the store's shared-memory file)

    one block = [num_layers, 2 (K, V), block_size, kv_heads, head_dim], contiguous, both sides

Layouts (how many copies move the same bytes; the host bytes are identical either way):

* ``group`` (FastSwitch): one ``copy_`` per RunCopy, whatever its length and the layer count.
* ``per-layer`` (the vLLM <= 0.11 baseline): one copy per block per layer per K/V, i.e. a run of
  ``n`` blocks costs ``n * num_layers * 2`` copies of ``block_size * kv_heads * head_dim``
  elements each.

Modes:

* async (FastSwitch): copies run on a thread of the engine's own and, on CUDA, on its own
  ``torch.cuda.Stream``. Every job first waits on an event recorded on the compute stream when
  it was submitted, i.e. after every forward already enqueued (the last one that wrote a
  swapping-out sequence's blocks, or read blocks a swap-in is about to overwrite). Copies are
  ``non_blocking`` to or from the pinned arena; a job is complete when its end event says so.
  On the CPU the copy thread shares the cores with the step's intra-op threads, so a
  block-group copy is one plain ``memcpy`` on that thread: ``copy_`` would start an OpenMP
  team of its own beside the step's and oversubscribe the cores (its workers spin).
* sync (baseline): ``submit_*`` copy inline, on the caller's (compute) stream, and return when
  the copies are done; the step waits for them before its forward.

Contract:

* ``submit_out(seq, copies)`` / ``submit_in(seq, copies)`` start one job; at most one job per
  sequence and direction is unreported at a time. ``ValueError`` (nothing queued) for a run
  outside either side or a duplicate job.
* ``cancel_out(seq)`` drops a swap-out that has not started yet: True, and no byte of it is
  written to the host. False when it already started, finished, or was never submitted.
* ``poll()`` never blocks: the jobs completed (or failed) since the last poll, each reported
  exactly once, in submission order, with the bytes and copies they moved.
* ``wait_all()`` blocks until every submitted job is complete (they are still reported by
  ``poll``); ``close()`` drops jobs not yet started, waits for the rest, joins the thread,
  unregisters the pinned arena and drops every view of the pool and the arena.

The engine never decides what to copy and keeps no block ownership: the caller guarantees that
nothing else writes the source or touches the destination of a job until ``poll`` reports it.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import NamedTuple, SupportsInt

import torch

from servekit.names import SwapLayout
from worker_svc.kv_pool import KVPool
from worker_svc.plan import RunCopy

__all__ = [
    "Direction",
    "RunCopy",
    "SwapCompletions",
    "SwapEngine",
    "SwapFailure",
    "SwapLayout",
]

log = logging.getLogger(__name__)


class Direction(StrEnum):
    """Which way a job copies."""

    OUT = "out"  # device -> host
    IN = "in"  # host -> device


class SwapFailure(NamedTuple):
    """A job that raised while copying: ``seq``'s swap in ``direction`` is over, and its
    destination blocks may be partly written (the caller treats them as garbage)."""

    seq: int
    direction: Direction
    message: str


class SwapDone(NamedTuple):
    """One finished job: its bytes, its ``copy_`` calls, and how long its copies took
    (seconds: on the CPU and in sync mode the copies as the caller waited for them; on CUDA
    async the side stream's own time between its start and end, from CUDA events)."""

    direction: Direction
    nbytes: int
    copies: int
    seconds: float


class SwapCompletions(NamedTuple):
    """What finished since the previous ``poll``; ``jobs``: each finished one (not failed)."""

    swapped_out: tuple[int, ...] = ()
    swapped_in: tuple[int, ...] = ()
    failed: tuple[SwapFailure, ...] = ()
    out_bytes: int = 0
    in_bytes: int = 0
    copies: int = 0
    jobs: tuple[SwapDone, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.swapped_out or self.swapped_in or self.failed)


class _State(IntEnum):
    QUEUED = 0
    RUNNING = 1  # the copy thread is issuing (CPU: doing) the copies
    ISSUED = 2  # CUDA: every copy is on the side stream; `done` tells when they finish
    DONE = 3
    FAILED = 4


@dataclass(slots=True)
class _Job:
    seq: int
    direction: Direction
    copies: tuple[RunCopy, ...]
    nbytes: int
    state: _State = _State.QUEUED
    num_copies: int = 0
    seconds: float = 0.0  # the copies' time (CUDA async: from `started` and `done` at poll)
    error: str | None = None
    ready: torch.cuda.Event | None = None  # recorded on the compute stream at submit
    started: torch.cuda.Event | None = None  # recorded on the side stream before the copies
    done: torch.cuda.Event | None = None  # recorded on the side stream after the copies


@dataclass(frozen=True, slots=True)
class _Views:
    """Byte views of both sides: per block, and per block / layer / K-V (the baseline)."""

    dev: torch.Tensor  # [num_blocks, block_bytes]
    host: torch.Tensor  # [num_host_blocks, block_bytes]
    dev_chunks: torch.Tensor  # [num_blocks, num_layers * 2, chunk_bytes]
    host_chunks: torch.Tensor  # [num_host_blocks, num_layers * 2, chunk_bytes]


class SwapEngine:
    """Copies block runs between ``pool`` and ``host`` (uint8 ``[num_host_blocks, block_bytes]``
    on the CPU, e.g. the mapped arena). See the module docstring for the contract.

    Owns the copy thread (async), the side stream (CUDA async) and the pinning of ``host``
    (CUDA); it holds views of both sides and no block ownership. Called by the step executor
    (``submit_*``, ``cancel_out``, ``poll``, on the step thread) and by its owner at shutdown
    (``close``, before the pool and the arena are freed). Invariant: every job submitted is
    reported by ``poll`` exactly once (done or failed) unless ``cancel_out`` returned True or
    ``close`` dropped it before it started, and nothing was written for those.
    """

    def __init__(
        self,
        pool: KVPool,
        host: torch.Tensor,
        *,
        layout: SwapLayout = SwapLayout.GROUP,
        sync: bool = False,
    ) -> None:
        block_bytes = pool.block_bytes
        if host.dtype != torch.uint8 or host.dim() != 2 or host.shape[1] != block_bytes:
            raise ValueError(
                f"host arena must be uint8 [blocks, {block_bytes}], got {host.dtype} "
                f"{tuple(host.shape)}"
            )
        if host.device.type != "cpu" or not host.is_contiguous():
            raise ValueError("host arena must be a contiguous CPU tensor")
        self.layout = SwapLayout(layout)
        self.sync = sync
        self.device = pool.device
        self.block_bytes = block_bytes
        self.num_device_blocks = pool.num_blocks
        self.num_host_blocks = int(host.shape[0])
        self.copies_issued = 0  # every copy_ call so far (read it when the engine is idle)
        # Seconds spent copying so far: on the CPU and in sync mode the copies themselves; on
        # CUDA async, issuing them to the side stream.
        self.copy_seconds = 0.0
        pairs = pool.num_layers * 2
        dev = pool.tensor.view(torch.uint8).view(pool.num_blocks, block_bytes)
        self._views: _Views | None = _Views(
            dev=dev,
            host=host,
            dev_chunks=dev.view(pool.num_blocks, pairs, block_bytes // pairs),
            host_chunks=host.view(self.num_host_blocks, pairs, block_bytes // pairs),
        )
        self._cuda = self.device.type == "cuda"
        self._memcpy = not self._cuda and not sync  # see "Modes" above
        self._pinned_ptr: int | None = None
        self._stream: torch.cuda.Stream | None = None
        if self._cuda:
            self._pin(host)
            if not sync:
                self._stream = torch.cuda.Stream(self.device)
        self._lock = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._jobs: dict[tuple[Direction, int], _Job] = {}  # unreported, in submission order
        self._closing = False
        self._thread: threading.Thread | None = None
        if not sync:
            self._thread = threading.Thread(target=self._loop, name="fastswitch-swap", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ submit

    def submit_out(self, seq: int, copies: Sequence[RunCopy]) -> None:
        """Starts copying ``copies`` device -> host for ``seq``."""
        self._submit(seq, Direction.OUT, copies)

    def submit_in(self, seq: int, copies: Sequence[RunCopy]) -> None:
        """Starts copying ``copies`` host -> device for ``seq``."""
        self._submit(seq, Direction.IN, copies)

    def cancel_out(self, seq: int) -> bool:
        """Drops ``seq``'s swap-out if it has not started: True, nothing was written."""
        with self._lock:
            job = self._jobs.get((Direction.OUT, seq))
            if job is None or job.state is not _State.QUEUED:
                return False
            self._queue.remove(job)
            del self._jobs[(Direction.OUT, seq)]
            return True

    def _submit(self, seq: int, direction: Direction, copies: Sequence[RunCopy]) -> None:
        runs = tuple(RunCopy(c.device_start, c.host_start, c.count) for c in copies)
        self._check(seq, runs)
        job = _Job(seq, direction, runs, sum(r.count for r in runs) * self.block_bytes)
        with self._lock:
            if self._closing:
                raise RuntimeError("the swap engine is closed")
            if (direction, seq) in self._jobs:
                raise ValueError(f"sequence {seq} already has a swap-{direction} in flight")
            self._jobs[(direction, seq)] = job
            if not self.sync:
                if self._cuda:
                    job.ready = torch.cuda.Event()
                    job.ready.record(torch.cuda.current_stream(self.device))
                self._queue.append(job)
                self._lock.notify_all()
                return
        self._run_inline(job)

    def _check(self, seq: int, runs: tuple[RunCopy, ...]) -> None:
        for r in runs:
            if r.count <= 0:
                raise ValueError(f"empty run {tuple(r)} in the swap of sequence {seq}")
            if r.device_start < 0 or r.device_start + r.count > self.num_device_blocks:
                raise ValueError(
                    f"device blocks [{r.device_start}, {r.device_start + r.count}) outside the "
                    f"pool [0, {self.num_device_blocks}) (sequence {seq})"
                )
            if r.host_start < 0 or r.host_start + r.count > self.num_host_blocks:
                raise ValueError(
                    f"host blocks [{r.host_start}, {r.host_start + r.count}) outside the "
                    f"arena [0, {self.num_host_blocks}) (sequence {seq})"
                )

    # ------------------------------------------------------------------ report

    def poll(self) -> SwapCompletions:
        """Jobs complete since the last poll (never blocks)."""
        out: list[int] = []
        into: list[int] = []
        failed: list[SwapFailure] = []
        jobs: list[SwapDone] = []
        out_bytes = in_bytes = copies = 0
        with self._lock:
            for key, job in list(self._jobs.items()):
                if job.state is _State.ISSUED and job.done is not None and job.done.query():
                    job.state = _State.DONE
                    if job.started is not None:  # milliseconds of the side stream's work
                        job.seconds = job.started.elapsed_time(job.done) / 1000.0
                if job.state is _State.FAILED:
                    failed.append(SwapFailure(job.seq, job.direction, job.error or "failed"))
                elif job.state is not _State.DONE:
                    continue
                elif job.direction is Direction.OUT:
                    out.append(job.seq)
                    out_bytes += job.nbytes
                else:
                    into.append(job.seq)
                    in_bytes += job.nbytes
                if job.state is _State.DONE:
                    jobs.append(SwapDone(job.direction, job.nbytes, job.num_copies, job.seconds))
                copies += job.num_copies
                del self._jobs[key]
        return SwapCompletions(
            tuple(out), tuple(into), tuple(failed), out_bytes, in_bytes, copies, tuple(jobs)
        )

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet reported by ``poll``."""
        with self._lock:
            return len(self._jobs)

    def wait_all(self) -> None:
        """Blocks until every submitted job is complete (``poll`` still reports them)."""
        with self._lock:
            self._lock.wait_for(
                lambda: not any(j.state <= _State.RUNNING for j in self._jobs.values())
            )
            issued = [j.done for j in self._jobs.values() if j.state is _State.ISSUED]
        for event in issued:
            if event is not None:
                event.synchronize()

    def close(self) -> None:
        """Drops jobs not started, waits for the rest, joins the thread, unpins. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            for job in self._queue:
                del self._jobs[(job.direction, job.seq)]
            self._queue.clear()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._stream is not None:
            self._stream.synchronize()
        if self._pinned_ptr is not None:
            _check_cuda(torch.cuda.cudart().cudaHostUnregister(self._pinned_ptr), "unregister")
            self._pinned_ptr = None
        self._views = None

    def __enter__(self) -> SwapEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ copy

    def _loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                job = self._queue.popleft()
                job.state = _State.RUNNING
            try:
                if self._cuda:
                    self._issue_on_side_stream(job)
                else:
                    job.num_copies = self._copy(job, non_blocking=False)
                state = _State.ISSUED if self._cuda else _State.DONE
            except Exception as err:  # reported to the caller through poll(), never lost
                log.exception("swap failed", extra={"seq": job.seq, "dir": str(job.direction)})
                job.error = f"swap-{job.direction} failed: {err}"
                state = _State.FAILED
            with self._lock:
                job.state = state
                self._lock.notify_all()

    def _issue_on_side_stream(self, job: _Job) -> None:
        assert self._stream is not None and job.ready is not None
        job.started = torch.cuda.Event(enable_timing=True)
        job.done = torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(job.ready)
            job.started.record(self._stream)
            job.num_copies = self._copy(job, non_blocking=True)
            job.done.record(self._stream)

    def _run_inline(self, job: _Job) -> None:
        """Sync mode: the copies run now on the caller's stream and are done on return."""
        try:
            job.num_copies = self._copy(job, non_blocking=self._cuda)
            if self._cuda:
                started = time.perf_counter()
                torch.cuda.current_stream(self.device).synchronize()
                waited = time.perf_counter() - started
                job.seconds += waited
                with self._lock:
                    self.copy_seconds += waited
            job.state = _State.DONE
        except Exception as err:  # reported to the caller through poll(), never lost
            log.exception("swap failed", extra={"seq": job.seq, "dir": str(job.direction)})
            job.error = f"swap-{job.direction} failed: {err}"
            job.state = _State.FAILED

    def _copy(self, job: _Job, *, non_blocking: bool) -> int:
        """Issues every copy of ``job``; returns how many ``copy_`` calls it made."""
        views = self._views
        assert views is not None, "closed"
        out = job.direction is Direction.OUT
        issued = 0
        started = time.perf_counter()
        for r in job.copies:
            if self.layout is SwapLayout.GROUP:
                dev = views.dev[r.device_start : r.device_start + r.count]
                host = views.host[r.host_start : r.host_start + r.count]
                src, dst = (dev, host) if out else (host, dev)
                if self._memcpy:  # both contiguous, bounds checked at submit; drops the GIL
                    ctypes.memmove(dst.data_ptr(), src.data_ptr(), src.numel())
                else:
                    dst.copy_(src, non_blocking=non_blocking)
                issued += 1
                continue
            for i in range(r.count):
                dev_block = views.dev_chunks[r.device_start + i]
                host_block = views.host_chunks[r.host_start + i]
                for j in range(dev_block.shape[0]):  # every layer, K then V
                    src, dst = (
                        (dev_block[j], host_block[j]) if out else (host_block[j], dev_block[j])
                    )
                    dst.copy_(src, non_blocking=non_blocking)
                issued += dev_block.shape[0]
        job.seconds = time.perf_counter() - started
        with self._lock:
            self.copies_issued += issued
            self.copy_seconds += job.seconds
        return issued

    def _pin(self, host: torch.Tensor) -> None:
        """Page-locks the arena so copies to and from it are DMA (no staging buffer)."""
        if host.is_pinned():
            return
        ptr, size = host.data_ptr(), host.numel() * host.element_size()
        _check_cuda(torch.cuda.cudart().cudaHostRegister(ptr, size, 0), "register")
        self._pinned_ptr = ptr


def _check_cuda(code: SupportsInt, what: str) -> None:
    if int(code) != 0:
        raise RuntimeError(f"cudaHost{what.capitalize()} of the host arena failed: error {code}")
