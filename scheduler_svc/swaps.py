"""The swap controller: moving a request's KV between a worker's device blocks and the host arena.

    preempt ──▶ RESERVE host blocks ──▶ SwapOut ──▶ done: free device blocks ──▶ SWAPPED
    resume  ──▶ device blocks, PIN host copy (hashes checked) ──▶ SeqStart + SwapIn ──▶ RUNNING
    finish  ──▶ offload the full blocks the host lacks (content-addressed, retained) ──▶ free

Which of a finished request's blocks are written to the host is the host-write policy
(``HostWrite``, ``--host-write``): all of its full blocks (write-through), or only those that
were hit at least once, on either tier (selective): a block nobody reused is left to the device
cache, and costs no copy, no reserve and no commit.

Rules (docs/architecture.md, swap rules): device blocks under a copy are freed only when the worker
reports it done (1); a swapping-in request is in no forward until done (2); pins and reservations
are leases (4); the host copy stays valid after a swap-in and only blocks the host lacks move again
(5); retained blocks are content-addressed per tenant and model (6); KV is a cache — any failure
falls back to recompute (7).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from scheduler_svc.host_copies import HostCopies
from scheduler_svc.host_ops import HostOp, HostOpKind, pair_runs
from scheduler_svc.plan import SeqStart, StepOutput, StepPlan, SwapOrder
from scheduler_svc.request import Request, Status
from scheduler_svc.request_table import RequestTable
from scheduler_svc.stats import Counters
from scheduler_svc.waiting import WaitQueue
from scheduler_svc.workers import WorkerRegistry, WorkerSlot

log = logging.getLogger(__name__)


class HostWrite(StrEnum):
    """When a finished request's device blocks are written to the host arena."""

    THROUGH = "through"  # at finish, every full block the host lacks
    SELECTIVE = "selective"  # at finish, only the blocks that were hit (its reused prefix)


HOST_WRITE: tuple[str, ...] = tuple(h.value for h in HostWrite)


class SwapController:
    """Owns every request's transitions through SWAPPING_OUT, SWAPPED and SWAPPING_IN, and the
    offload of a finished request's KV: it queues the host side (through HostCopies), turns the
    host agent's answers into swap orders for the next plan, and applies the worker's reports.

    Called by admission (preempt by swap, resume), by the core (finish, host answers, step
    results) and for recompute. Invariant (rule 1): a request's device blocks are freed only once
    no copy of them is in flight (``swap_sent`` is clear)."""

    def __init__(
        self,
        *,
        kv_reuse: bool,
        device_prefix_cache: bool = False,
        host_write: HostWrite = HostWrite.THROUGH,
        table: RequestTable,
        workers: WorkerRegistry,
        waiting: WaitQueue,
        host: HostCopies,
        counters: Counters,
    ) -> None:
        self._kv_reuse = kv_reuse
        self._device_prefix_cache = device_prefix_cache
        self._host_write = host_write
        self._table = table
        self._workers = workers
        self._waiting = waiting
        self._host = host
        self._counters = counters

    # ------------------------------------------------------- host answers

    def on_reserved(
        self, seq: int, lease_id: str, host_blocks: list[int], ticket: int | None = None
    ) -> None:
        """The store reserved host blocks: the swap-out (or offload) goes in the next plan.
        `ticket`: the reserve's (None: the request's current one)."""
        self._host.on_reserved(host_blocks)
        req = self._table.by_seq(seq)
        slot = self._workers.slot_of(req)
        wanted = (
            req is not None
            and (req.status == Status.SWAPPING_OUT or (req.is_finished and req.offloading))
            and _current(req, ticket)
        )
        if req is None or slot is None or not wanted or req.swap_lease is not None:
            self._host.release_lease(seq, lease_id)
            return
        first = len(req.host_blocks)
        device = slot.allocator.block_ids(seq)[first : first + len(host_blocks)]
        req.swap_lease = lease_id
        req.swap_host_blocks = list(host_blocks)
        req.swap_sent = True
        hashes = self._host.order_hashes(req, first, len(host_blocks), req.swap_tokens)
        slot.swap_out_orders.append(
            SwapOrder(
                seq,
                tuple(pair_runs(device, host_blocks)),
                lease_id,
                hashes,
                req.tenant,
                req.retain_ttl_s,
            )
        )

    def on_pinned(self, seq: int, lease_id: str, ticket: int | None = None) -> None:
        """The host copy is pinned: SeqStart + SwapIn go in the next plan."""
        req = self._table.by_seq(seq)
        slot = self._workers.slot_of(req)
        if (
            req is None
            or slot is None
            or req.status != Status.SWAPPING_IN
            or req.swap_sent
            or not _current(req, ticket)
        ):
            self._host.release_lease(seq, lease_id)
            return
        n = len(req.host_blocks)
        k = len(slot.allocator.prefix_of(seq))  # shared from the device tier: not copied
        device = slot.allocator.block_ids(seq)
        req.swap_lease = lease_id
        req.swap_sent = True
        start = SeqStart(
            seq=seq,
            sampling=req.sampling,
            position=req.num_computed,
            last_token=req.output_ids[-1] if req.decode_ready else None,
            num_generated=len(req.output_ids),
            blocks=slot.allocator.table(seq),
        )
        order = SwapOrder(seq, tuple(pair_runs(device[k:n], req.host_blocks[k:])), lease_id)
        slot.swap_in_orders.append((start, order))

    def on_host_failed(
        self, seq: int, kind: HostOpKind, message: str, ticket: int | None = None
    ) -> None:
        """A reserve or pin failed (host memory short, evicted, lease lost): the swap falls back
        to recompute, and a failed pin's blocks leave the host index. `ticket`: the failed op's
        (None: the request's current swap, e.g. a copy the worker reported failed)."""
        req = self._table.by_seq(seq)
        if req is None:
            return
        if not _current(req, ticket):
            return  # a reserve or pin of a swap given up since: nothing waits on it
        slot = self._workers.slot_of(req)
        if req.is_finished:  # an offload that could not get host memory: just let it go
            if slot is not None and req.offloading and not req.swap_sent:
                self.release_after_swap(slot, req)
            return
        if req.status not in (Status.SWAPPING_OUT, Status.SWAPPING_IN, Status.SWAPPED):
            # Nothing waits on this op any more: a swap-out given up before its reserve came
            # back (rule 3) runs on, a request already requeued is queued once.
            return
        log.warning(
            "host op failed; recomputing", extra={"seq": seq, "op": kind.value, "why": message}
        )
        if kind is HostOpKind.PIN:
            self._host.on_pin_failed(req)
        if slot is not None and req.status in (Status.SWAPPING_OUT, Status.SWAPPING_IN):
            slot.allocator.free(seq)
            del slot.running[seq]
            if req.resident:
                slot.pending_drop.append(seq)
        elif req.status == Status.SWAPPED:
            self._waiting.remove(seq)
        self.requeue_for_recompute(req)

    def on_store_lost(self) -> None:
        """The KV store is gone, and every host block, lease and retained prefix with it (KV is
        a cache, rule 7). Host copies are forgotten without calling the store; SWAPPED requests
        are recomputed; queued reserves and pins fail as if the store had refused them (frees
        and releases are dropped: nothing is left to free); a copy still in flight on a worker
        counts as failed when it is reported, whatever its commit said."""
        ops = self._host.take()
        self._host.store_lost()
        for req in self._table.all_seqs():
            self._host.forget_lost(req)
            if req.status == Status.SWAPPED:
                self._waiting.remove(req.seq)
                self.requeue_for_recompute(req)
        for op in ops:
            if op.kind in (HostOpKind.RESERVE, HostOpKind.PIN):
                self.on_host_failed(op.seq, op.kind, "the KV store is gone", op.ticket)

    # ---------------------------------------------------------- transitions

    def requeue_for_recompute(self, req: Request) -> None:
        """Forgets the request's KV everywhere and queues its token ids to be prefilled again.
        No copy of it is in flight any more (it failed, was refused, or its worker is gone), so
        its swap state goes too: a request recomputed with a copy still on record would wait
        for that copy when it finishes, and keep its device blocks for ever."""
        self._host.release(req)
        self._host.clear_swap(req)
        self._host.take_stale(req.seq)
        req.swap_ticket += 1  # answers to its reserves and pins in flight are for nothing now
        req.cached_prompt_tokens = req.device_cached_tokens = 0  # its prompt is prefilled again
        req.status = Status.WAITING
        req.worker_id = None
        req.resident = False
        req.decode_ready = False
        req.num_computed = 0
        req.recomputes += 1
        self._counters.recomputes += 1
        self._waiting.append(req)

    def begin_swap_out(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        """Swap-out: host blocks are reserved for what the host lacks (its host copy's valid
        blocks, then the blocks the host index holds, are skipped); blocks stay until done."""
        keep = self._host_blocks_kept(slot, req)
        self._host.drop_host_blocks(req, keep)
        if self._kv_reuse:
            keep = self._host.adopt_held(req, req.num_computed // slot.info.block_size)
        need = slot.info.blocks_for(req.num_computed) - keep
        req.status = Status.SWAPPING_OUT
        req.swap_tokens = req.num_computed
        self._counters.swap_bytes_avoided += keep * slot.info.block_bytes
        if need == 0:  # the host holds it all already: nothing to copy
            self._swapped_out(slot, req, plan.drop)
            return
        req.swap_ticket += 1
        self._host.queue(
            HostOp(HostOpKind.RESERVE, req.seq, num_blocks=need, ticket=req.swap_ticket)
        )

    def blocks_to_copy_out(self, slot: WorkerSlot, req: Request) -> int:
        """Device blocks a swap-out of `req` would copy now: those the host lacks."""
        kept = self._host_blocks_kept(slot, req)
        if self._kv_reuse:
            kept += len(self._host.held_after(req, kept, req.num_computed // slot.info.block_size))
        return slot.info.blocks_for(req.num_computed) - kept

    def _host_blocks_kept(self, slot: WorkerSlot, req: Request) -> int:
        """Blocks of `req`'s host copy still valid (rule 5, KV reuse): a swap-out skips them."""
        return req.host_tokens // slot.info.block_size if self._kv_reuse else 0

    def begin_swap_in(self, req: Request) -> None:
        """Swap-in of a request just placed with its device blocks: pin the host copy first."""
        req.swap_ticket += 1
        self._host.queue(
            HostOp(
                HostOpKind.PIN,
                req.seq,
                blocks=tuple(req.host_blocks),
                hashes=tuple(req.host_hashes),
                ticket=req.swap_ticket,
            )
        )
        self._counters.swap_ins += 1
        req.swap_ins += 1

    def fetch_still_pays(self, req: Request, device_blocks: int) -> bool:
        """Whether a new prompt's host hit is still worth its swap-in on a worker whose device
        holds its first `device_blocks` blocks: the pin's round trip and the copy of the rest
        against prefilling the rest (the lookup at submit knew no worker). Nothing left to
        fetch never pays: the device match is shared and the last block computed, with no pin
        and no swap-in step."""
        rest = req.host_blocks[device_blocks:]
        return bool(rest) and self._host.fetch_pays(rest)

    def decline_fetch(self, req: Request, device_blocks: int) -> None:
        """The host hit does not pay (``fetch_still_pays``): `req` starts afresh instead."""
        self._host.decline_hit(req, device_blocks)

    def begin_offload(self, slot: WorkerSlot, req: Request) -> bool:
        """A finished request's full blocks the host lacks (of those the host-write policy
        writes) are copied out and retained (6). False when there is nothing to offload (the
        caller frees at once)."""
        bs = slot.info.block_size
        full = self._blocks_to_write(req, bs)
        keep = min(req.host_tokens // bs, full)
        if not self._host.retain or req.retain_ttl_s is None or not req.resident:
            return False
        self._host.drop_host_blocks(req, keep)
        keep = self._host.adopt_held(req, full)  # e.g. a shared prefix written through before
        if full <= keep:
            return False
        self._host.begin_offload(req)
        req.swap_tokens = full * bs
        self._counters.offloaded_blocks += full - keep
        req.swap_ticket += 1
        self._host.queue(
            HostOp(HostOpKind.RESERVE, req.seq, num_blocks=full - keep, ticket=req.swap_ticket)
        )
        return True

    def _blocks_to_write(self, req: Request, block_size: int) -> int:
        """How many of a finished request's first full blocks the host-write policy writes:
        all of them, or (selective) those of its prefix that was hit, on the device or the host
        (the system prompt a second request found, not the reply nobody asked for again)."""
        full = req.num_computed // block_size
        if self._host_write is HostWrite.SELECTIVE:
            return min(full, req.cached_prompt_tokens // block_size)
        return full

    def _swapped_out(self, slot: WorkerSlot, req: Request, drops: list[int]) -> None:
        """Rule 1: the copy is done, so the device blocks go back and the worker forgets it
        (`drops`: the plan that must carry the drop before the blocks are given again)."""
        self._host.adopt_swap_copy(req)
        req.swap_outs += 1
        self._counters.swap_outs += 1
        slot.allocator.free(req.seq)
        del slot.running[req.seq]
        drops.append(req.seq)
        req.resident = False
        req.worker_id = None
        req.status = Status.SWAPPED
        self._waiting.append(req)

    def cache_hashes(self, slot: WorkerSlot, req: Request) -> list[bytes]:
        """The content addresses under which a leaving request's full computed blocks stay
        cached on the device (empty with the device tier off)."""
        if not self._device_prefix_cache:
            return []
        return self._host.hashes(req, req.num_computed // slot.info.block_size)

    def release_after_swap(self, slot: WorkerSlot, req: Request) -> None:
        """A finished request whose copy is over: free its device blocks now (rule 1). After an
        offload (it finished computing, its KV is whole) its full blocks stay cached."""
        cache = self.cache_hashes(slot, req) if req.offloading else []
        slot.allocator.free(req.seq, cache=cache)
        slot.running.pop(req.seq, None)
        slot.pending_drop.append(req.seq)
        self._host.clear_swap(req)
        self._host.end_offload(req)
        req.resident = False
        self._host.release(req)
        self._table.release_seq(req)

    # --------------------------------------------------------- worker results

    def apply(self, slot: WorkerSlot, output: StepOutput) -> None:
        """Applies the swap completions and cancellations a worker reported."""
        for seq in output.swap_out_done:
            slot.swaps_in_flight.discard(seq)
            req = self._table.by_seq(seq)
            if req is not None and self._host.take_stale(seq):
                self.swap_failed(slot, req)  # committed to a store that is gone
            elif req is not None:
                self._swap_out_done(slot, req, output.committed.get(seq))
        for seq in output.swap_out_failed:
            slot.swaps_in_flight.discard(seq)
            self._host.take_stale(seq)
            req = self._table.by_seq(seq)
            if req is not None:
                self.swap_failed(slot, req)
        for seq in output.swap_out_cancelled:
            slot.swaps_in_flight.discard(seq)
            self._host.take_stale(seq)
            req = self._table.by_seq(seq)
            if req is None:
                continue
            if req.is_finished:
                self.release_after_swap(slot, req)
            else:
                self._host.clear_swap(req)
        for seq in output.swap_in_done:
            slot.swaps_in_flight.discard(seq)
            self._host.take_stale(seq)  # read from the old arena while it was still mapped
            req = self._table.by_seq(seq)
            if req is None:
                continue
            self._host.clear_swap(req)
            if req.is_finished:
                self.release_after_swap(slot, req)
                continue
            req.status = Status.RUNNING
            req.just_swapped_in = True
            if not self._kv_reuse:
                self._host.release(req)

    def swap_failed(self, slot: WorkerSlot, req: Request) -> None:
        """A copy of `req` is over without a host copy to show for it (the store refused the
        commit or is gone, or the copy itself failed): nothing is adopted (rule 7). A finished
        request's blocks go now and its deferred lookups wake (they prefill instead); a swapping-out
        one is recomputed; a running one (cancelled too late) keeps running."""
        self._host.clear_swap(req)
        if req.is_finished:
            self.release_after_swap(slot, req)
        elif req.status == Status.SWAPPING_OUT:
            log.warning("swap-out not committed; recomputing", extra={"seq": req.seq})
            slot.allocator.free(req.seq)
            del slot.running[req.seq]
            if req.resident:
                slot.pending_drop.append(req.seq)
            self.requeue_for_recompute(req)

    def _swap_out_done(
        self, slot: WorkerSlot, req: Request, committed: tuple[int, ...] | None
    ) -> None:
        if committed is not None:  # duplicates of retained blocks were replaced
            req.swap_host_blocks = list(committed)
        self._host.on_committed(req)
        if req.status == Status.SWAPPING_OUT:
            self._swapped_out(slot, req, slot.pending_drop)
        elif req.offloading:
            self.release_after_swap(slot, req)  # retained: the store's cache now
        elif req.status == Status.RUNNING:
            self._host.adopt_swap_copy(req)  # cancelled too late, but the host copy is valid
        else:  # finished while copying: the blocks may go, and its private copy too
            hashes = self._host.order_hashes(
                req, len(req.host_blocks), len(req.swap_host_blocks), req.swap_tokens
            )
            self._host.free_private(req.seq, req.swap_host_blocks, hashes)
            self.release_after_swap(slot, req)


def _current(req: Request, ticket: int | None) -> bool:
    """True when an answer with `ticket` is for the request's current reserve or pin."""
    return ticket is None or ticket == req.swap_ticket
