"""The scheduler tests' fakes: a worker and a KV store that follow the core's plans exactly, and
the helpers that drive the core through its front door (``step``, ``drive``).

The fake worker keeps KV only in its device blocks (one token id per slot) and rebuilds a
sequence's history from its block table, so a plan that maps the wrong blocks, copies the wrong
runs, frees blocks under a copy, or resumes from the wrong position changes the output.
Its "model" hashes the whole history it reads back. A block may be in several tables only
while none of them writes it (the device prefix cache shares blocks read-only): a write into a
block another sequence holds fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import deque
from dataclasses import dataclass, field, replace

import grpc

from proto import worker_pb2 as wk
from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc.core import SchedulerCore
from scheduler_svc.host_ops import HostOp, HostOpKind
from scheduler_svc.plan import StepOutput, StepPlan, SwapOrder
from scheduler_svc.workers import WorkerInfo


def next_token(history: list[int]) -> int:
    digest = hashlib.blake2b(str(history).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % 250  # never the test EOS (255)


@dataclass
class _Seq:
    table: list[int]
    position: int
    last: int | None


@dataclass
class FakeHost:
    """Host arena + store: reserve/pin/free/release as the core asks (all answered at once).
    Like the real store it evicts on its own, without telling the scheduler: a reserve short of
    free space takes the least recently used unpinned retained blocks (committed or unpinned
    last), so the scheduler's host index goes stale and only its pins' hash checks find out."""

    capacity: int = 10_000
    blocks: dict[int, list[int | None]] = field(default_factory=dict)
    free_ids: list[int] = field(default_factory=list)
    next_id: int = 0
    leases: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    committed: set[int] = field(default_factory=set)
    reserved: set[int] = field(default_factory=set)
    fail_reserve: bool = False
    index: dict[bytes, int] = field(default_factory=dict)  # content hash -> block
    hash_of: dict[int, bytes] = field(default_factory=dict)
    pinned: dict[int, int] = field(default_factory=dict)
    recency: dict[int, None] = field(default_factory=dict)  # retained blocks, oldest first
    evictions: int = 0
    stale_pins: int = 0  # pins refused because a block's content was evicted
    lease_ids: itertools.count = field(default_factory=itertools.count)

    def serve(self, core: SchedulerCore) -> int:
        """Answers every queued host op at once; returns how many there were."""
        ops = core.take_host_ops()
        self.answer(core, ops)
        return len(ops)

    def answer(self, core: SchedulerCore, ops: list[HostOp]) -> None:
        """Answers `ops` (taken from the core earlier: a store whose answers lag)."""
        for op in ops:
            if op.kind is HostOpKind.RESERVE:
                if self.fail_reserve or not self._make_room(op.num_blocks):
                    core.on_host_failed(op.seq, op.kind, "host memory short", op.ticket)
                    continue
                ids = [self._new_id() for _ in range(op.num_blocks)]
                self.reserved.update(ids)
                lease = f"r{next(self.lease_ids)}"
                self.leases[lease] = ("reserve", tuple(ids))
                core.on_reserved(op.seq, lease, ids, op.ticket)
            elif op.kind is HostOpKind.PIN:
                expected = op.hashes or (b"",) * len(op.blocks)
                if any(
                    h and self.hash_of.get(b) != h for b, h in zip(op.blocks, expected, strict=True)
                ):
                    self.stale_pins += 1
                    core.on_host_failed(op.seq, op.kind, "evicted", op.ticket)
                    continue
                if not set(op.blocks) <= self.committed:  # freed since (a late pin): NotFound
                    core.on_host_failed(op.seq, op.kind, "not committed", op.ticket)
                    continue
                lease = f"p{next(self.lease_ids)}"
                self.leases[lease] = ("pin", op.blocks)
                for b in op.blocks:
                    self.pinned[b] = self.pinned.get(b, 0) + 1
                core.on_pinned(op.seq, lease, op.ticket)
            elif op.kind is HostOpKind.FREE:
                for h in op.hashes:
                    if h in self.index and not self.pinned.get(self.index[h]):
                        self._drop(self.index[h])
                for b in op.blocks:
                    assert b in self.committed, f"free of host block {b} not committed"
                    assert b not in self.hash_of, f"retained block {b} freed by id"
                    self._drop(b)
            else:
                self.release(op.lease_id)

    def _make_room(self, num_blocks: int) -> bool:
        """Evicts the least recently used unpinned retained blocks until `num_blocks` fit; False
        (nothing evicted) when even evicting all of them would not be enough."""
        short = len(self.reserved) + len(self.committed) + num_blocks - self.capacity
        victims = [b for b in self.recency if not self.pinned.get(b)][: max(short, 0)]
        if len(victims) < short:
            return False
        for b in victims:
            self._drop(b)
            self.evictions += 1
        return True

    def evict_some(self, fraction: float) -> int:
        """Evicts the oldest `fraction` of the unpinned retained blocks; how many."""
        victims = [b for b in self.recency if not self.pinned.get(b)]
        victims = victims[: int(len(victims) * fraction)]
        for b in victims:
            self._drop(b)
        self.evictions += len(victims)
        return len(victims)

    def _touch(self, b: int) -> None:
        self.recency.pop(b, None)
        self.recency[b] = None

    def _drop(self, b: int) -> None:
        self.recency.pop(b, None)
        self.committed.discard(b)
        self.blocks.pop(b, None)
        h = self.hash_of.pop(b, None)
        if h is not None:
            del self.index[h]
        self.free_ids.append(b)

    def evict_all(self) -> int:
        """Drops every unpinned retained block (an eviction storm); how many."""
        return self.evict_some(1.0)

    def retained(self) -> int:
        return len(self.hash_of)

    def _new_id(self) -> int:
        if self.free_ids:
            return self.free_ids.pop()
        self.next_id += 1
        return self.next_id - 1

    def commit(self, lease: str, blocks: list[int], hashes: tuple[bytes, ...]) -> list[int]:
        """Commits written blocks; a duplicate of a retained hash is freed for the existing one."""
        kind, ids = self.leases.pop(lease)
        assert kind == "reserve" and sorted(ids) == sorted(blocks)
        self.reserved -= set(ids)
        canonical = []
        for i, b in enumerate(blocks):
            h = hashes[i] if i < len(hashes) else b""
            if h and h in self.index:
                self.free_ids.append(b)
                self.blocks.pop(b, None)
                canonical.append(self.index[h])
                self._touch(self.index[h])
                continue
            self.committed.add(b)
            if h:
                self.index[h] = b
                self.hash_of[b] = h
                self._touch(b)
            canonical.append(b)
        return canonical

    def release(self, lease: str) -> None:
        entry = self.leases.pop(lease, None)
        if entry is not None and entry[0] == "reserve":
            self.reserved -= set(entry[1])
            self.free_ids.extend(entry[1])
        if entry is not None and entry[0] == "pin":
            for b in entry[1]:
                self.pinned[b] -= 1
                if b in self.recency:
                    self._touch(b)


class FakeWorker:
    """Executes plans like worker_svc; swaps finish `swap_delay` steps after they were issued."""

    def __init__(self, info: WorkerInfo, host: FakeHost | None = None, swap_delay: int = 1):
        self.info = info
        self.host = host or FakeHost()
        self.swap_delay = swap_delay
        self.device: dict[int, list[int | None]] = {}
        self.seqs: dict[int, _Seq] = {}
        self.holders: dict[int, set[int]] = {}  # device block -> the seqs whose table has it
        self.in_flight: list[tuple[int, str, SwapOrder]] = []  # (due step, kind, order)
        self.busy_blocks: set[int] = set()  # device blocks under a copy
        self.steps = 0
        self.copies = 0
        self.blocks_copied_out = 0
        self.fail_commit = False  # the store refuses commits (gone): swap_out_failed
        # The store each copy was issued against: a restarted store (``host`` replaced) knows
        # no lease of the old one, and a swap-in still reads the old arena it mapped.
        self.issued_on: dict[tuple[str, int], FakeHost] = {}

    # --- plan execution (the order executor.py uses) ---
    def run(self, plan: StepPlan) -> StepOutput:
        """Executes `plan`; swaps under leases its current store never granted (a store that
        restarted since they were planned) are refused, as worker_svc/link.py refuses them."""
        stale = {
            o.seq for o in [*plan.swap_in, *plan.swap_out] if o.lease_id not in self.host.leases
        }
        return self.refusing(plan, stale, release=False) if stale else self._run(plan)

    def refusing(self, plan: StepPlan, seqs: set[int], *, release: bool) -> StepOutput:
        """Runs `plan` without the swaps of `seqs`, reported refused: swap-outs not committed,
        swap-ins as errors (never started); `release`: their leases are given back."""
        ins = {o.seq for o in plan.swap_in if o.seq in seqs}
        kept = StepPlan(
            step_id=plan.step_id,
            start=[s for s in plan.start if s.seq not in ins],
            append=[a for a in plan.append if a.seq not in ins],
            swap_in=[o for o in plan.swap_in if o.seq not in seqs],
            swap_out=[o for o in plan.swap_out if o.seq not in seqs],
            prefill=plan.prefill,
            decode=plan.decode,
            cancel_swap_out=plan.cancel_swap_out,
            drop=plan.drop,
        )
        out = self._run(kept)
        refused_out = tuple(o.seq for o in plan.swap_out if o.seq in seqs)
        if release:
            for order in [*plan.swap_in, *plan.swap_out]:
                if order.seq in seqs:
                    self.host.release(order.lease_id)
        return replace(
            out,
            swap_out_failed=out.swap_out_failed + refused_out,
            errors={**out.errors, **{seq: "the KV store's arena is unavailable" for seq in ins}},
        )

    def _run(self, plan: StepPlan) -> StepOutput:
        self.steps += 1
        for seq in plan.drop:
            s = self.seqs.pop(seq, None)
            for b in s.table if s else []:
                assert b not in self.busy_blocks, f"block {b} dropped under a copy"
                self.holders[b].discard(seq)
                if not self.holders[b]:
                    del self.holders[b]
        for start in plan.start:
            assert start.seq not in self.seqs, f"seq {start.seq} started twice"
            self.seqs[start.seq] = _Seq([], start.position, start.last_token)
            self._append(start.seq, [b for r in start.blocks for b in r.blocks()])
        for a in plan.append:
            self._append(a.seq, [b for r in a.blocks for b in r.blocks()])
        for order in plan.swap_in:
            self._issue("in", order)
        for order in plan.swap_out:
            self._issue("out", order)
        cancelled = []
        for seq in plan.cancel_swap_out:
            for item in list(self.in_flight):
                if item[1] == "out" and item[2].seq == seq:
                    self.in_flight.remove(item)
                    self._unbusy(item[2])
                    self.issued_on.pop(("out", seq), self.host).release(item[2].lease_id)
                    cancelled.append(seq)
        sampled: dict[int, int] = {}
        for chunk in plan.prefill:
            assert chunk.seq not in self._swapping(), "compute on a sequence under swap-in"
            s = self.seqs[chunk.seq]
            for t in chunk.token_ids:
                self._write(s, t)
            if chunk.sample:
                sampled[chunk.seq] = s.last = next_token(self._read(s))
        for seq in plan.decode:
            assert seq not in self._swapping(), "compute on a sequence under swap-in"
            s = self.seqs[seq]
            assert s.last is not None
            self._write(s, s.last)
            sampled[seq] = s.last = next_token(self._read(s))
        out_done, in_done, committed, failed = self._complete()
        return StepOutput(
            step_id=plan.step_id,
            sampled=sampled,
            swap_out_done=tuple(out_done),
            swap_in_done=tuple(in_done),
            swap_out_cancelled=tuple(cancelled),
            committed=committed,
            swap_out_failed=tuple(failed),
        )

    def _swapping(self) -> set[int]:
        return {o.seq for _, kind, o in self.in_flight if kind == "in"}

    def _issue(self, kind: str, order: SwapOrder) -> None:
        for c in order.copies:
            for d in range(c.device_start, c.device_start + c.count):
                assert d not in self.busy_blocks, f"two copies on device block {d}"
                self.busy_blocks.add(d)
        self.in_flight.append((self.steps + self.swap_delay - 1, kind, order))
        self.issued_on[(kind, order.seq)] = self.host

    def _unbusy(self, order: SwapOrder) -> None:
        for c in order.copies:
            for d in range(c.device_start, c.device_start + c.count):
                self.busy_blocks.discard(d)

    def _complete(self) -> tuple[list[int], list[int], dict[int, tuple[int, ...]], list[int]]:
        out_done, in_done, committed, failed = [], [], {}, []
        for item in list(self.in_flight):
            due, kind, order = item
            if due > self.steps:
                continue
            self.in_flight.remove(item)
            self._unbusy(order)
            host = self.issued_on.pop((kind, order.seq), self.host)
            for c in order.copies:
                self.copies += 1
                for i in range(c.count):
                    d, h = c.device_start + i, c.host_start + i
                    if kind == "out":
                        host.blocks[h] = list(self.device.get(d, [None] * self.info.block_size))
                        self.blocks_copied_out += 1
                    else:
                        self.device[d] = list(host.blocks[h])
            if kind == "out" and (self.fail_commit or host is not self.host):
                host.release(order.lease_id)  # as link.settle_swaps gives it back
                failed.append(order.seq)
            elif kind == "out":
                written = [c.host_start + i for c in order.copies for i in range(c.count)]
                canonical = self.host.commit(order.lease_id, written, order.block_hashes)
                if canonical != written:
                    committed[order.seq] = tuple(canonical)
                out_done.append(order.seq)
            else:
                host.release(order.lease_id)
                in_done.append(order.seq)
        return out_done, in_done, committed, failed

    def _append(self, seq: int, blocks: list[int]) -> None:
        s = self.seqs[seq]
        bs = self.info.block_size
        for b in blocks:
            assert b not in self.busy_blocks, f"block {b} reallocated under a copy (rule 1)"
            if b in self.holders:  # shared: only a prefix the sequence will never write
                assert (len(s.table) + 1) * bs <= s.position, f"block {b} given to two sequences"
            self.holders.setdefault(b, set()).add(seq)
            s.table.append(b)

    def _write(self, s: _Seq, token: int) -> None:
        bs = self.info.block_size
        assert s.position < len(s.table) * bs, "write past the block table"
        block = s.table[s.position // bs]
        assert len(self.holders[block]) == 1, f"write into block {block}, shared by {self.holders}"
        self.device.setdefault(block, [None] * bs)[s.position % bs] = token
        s.position += 1

    def _read(self, s: _Seq) -> list[int]:
        bs = self.info.block_size
        out = []
        for pos in range(s.position):
            tok = self.device.get(s.table[pos // bs], [None] * bs)[pos % bs]
            assert tok is not None, f"KV of position {pos} missing"
            out.append(tok)
        return out


def step(core: SchedulerCore, wid: str, worker: FakeWorker) -> StepPlan | None:
    """One iteration of one worker, host answers included; None if it had nothing to do."""
    worker.host.serve(core)
    plan = core.schedule(wid)
    worker.host.serve(core)
    if plan is not None:
        core.update_from_output(wid, worker.run(plan))
        worker.host.serve(core)
        core.check_integrity()
    return plan


def drive(core: SchedulerCore, workers: dict[str, FakeWorker], max_steps: int = 20_000):
    """Runs every worker (and its host store) until no work is left; returns the plans seen.

    With ``async_scheduling`` each worker's next plan is made before the result of the plan it
    is running is applied (one plan ahead, as the frontend sends them): the worker executes a
    plan only when its result is taken, so the plan after it never saw that result."""
    plans: list[StepPlan] = []
    depth = 2 if core.config.async_scheduling else 1
    sent: dict[str, deque[StepPlan]] = {wid: deque() for wid in workers}
    for _ in range(max_steps):
        progressed = False
        for wid, worker in workers.items():
            pipe = sent[wid]
            served = worker.host.serve(core)
            while len(pipe) < depth:
                plan = core.schedule(wid)
                served += worker.host.serve(core)
                if plan is None:
                    break
                pipe.append(plan)
                plans.append(plan)
            if not pipe:
                progressed = progressed or served > 0
                continue
            progressed = True
            core.update_from_output(wid, worker.run(pipe.popleft()))
            worker.host.serve(core)
            core.check_integrity()
        if not progressed:
            return plans
    raise AssertionError("did not drain")


class LinkWorker:
    """A worker that follows plans over the real StepLink stream (for the servicer tests); its
    "model" hashes every token it was fed, like FakeWorker's."""

    def __init__(
        self,
        target: str,
        worker_id: str = "w0",
        *,
        fingerprint: str,
        vocab_size: int = 262,
        max_model_len: int = 256,
    ):
        self.target = target
        self.hello = wk.WorkerHello(
            worker_id=worker_id,
            model_fingerprint=fingerprint,
            num_blocks=32,
            block_size=4,
            block_bytes=16,
            max_model_len=max_model_len,
            device="cpu",
            vocab_size=vocab_size,
        )
        self.fed: dict[int, list[int]] = {}
        self.last: dict[int, int | None] = {}
        self.joined = asyncio.Event()
        self.step_delay_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the link in a task this fake owns (``kill`` ends it)."""
        self._task = asyncio.create_task(self.run(), name=f"link-worker-{self.hello.worker_id}")

    async def kill(self) -> None:
        """The worker dies: its stream is cut without a goodbye."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def step(self, plan: wk.StepPlan) -> wk.StepResult:
        for seq in plan.drop:
            self.fed.pop(seq)
        for s in plan.start:
            self.fed[s.seq] = []
            self.last[s.seq] = s.last_token if s.HasField("last_token") else None
        out = wk.StepResult(step_id=plan.step_id)
        for c in plan.prefill:
            self.fed[c.seq].extend(c.token_ids)
            if c.sample:
                tok = self.last[c.seq] = next_token(self.fed[c.seq])
                out.seqs.append(c.seq)
                out.tokens.append(tok)
        for seq in plan.decode:
            self.fed[seq].append(self.last[seq])
            tok = self.last[seq] = next_token(self.fed[seq])
            out.seqs.append(seq)
            out.tokens.append(tok)
        return out

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            call = wk_grpc.StepLinkStub(channel).Connect()
            await call.write(wk.WorkerMessage(hello=self.hello))
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF or msg.HasField("goodbye"):
                    return
                if msg.HasField("accepted"):
                    self.joined.set()
                    continue
                await asyncio.sleep(self.step_delay_s)
                await call.write(wk.WorkerMessage(result=self.step(msg.plan)))
