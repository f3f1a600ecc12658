"""Context switching and retained KV, the half of the scheduler core that moves KV off the device.

    preempt ──▶ RESERVE host blocks ──▶ SwapOut ──▶ done: free device blocks ──▶ SWAPPED
    resume  ──▶ device blocks, PIN host copy (hashes checked) ──▶ SeqStart + SwapIn ──▶ RUNNING
    finish  ──▶ offload the full blocks the host lacks (content-addressed, retained) ──▶ free
    arrive  ──▶ LOOKUP the prompt's block hashes ──▶ hit: SWAPPED at the cached length

Rules (DESIGN.md): device blocks under a copy are freed only when the worker reports it done (1);
a swapping-in request is in no forward until done (2); a request chosen to run while swapping out
cancels the swap-out and keeps its blocks (3); pins and reservations are leases (4); the host copy
stays valid after a swap-in and only blocks the host lacks move again (5); retained blocks are
content-addressed per tenant and model (6); KV is a cache — any failure falls back to recompute (7).

Host copies: full blocks are content-addressed (``host_hashes[i]`` non-empty) when retention is on:
they belong to the store's cache once written (evictable, never freed by us); a partial last block
is private (empty hash) and freed by us when no longer needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from scheduler_svc.host_ops import HostOp, HostOpKind, pair_runs
from scheduler_svc.plan import SeqStart, StepOutput, StepPlan, SwapOrder
from scheduler_svc.prefix_hash import extend_chain
from scheduler_svc.request import LookupState, Request, Status
from scheduler_svc.workers import WorkerSlot

log = logging.getLogger(__name__)


class ContextSwitching:
    """Mixed into SchedulerCore; uses its tables (declared here for the type checker)."""

    _by_seq: dict[int, Request]
    _workers: dict[str, WorkerSlot]
    _waiting: list[Request]
    _host_ops: list[HostOp]
    _requests: dict[str, Request]
    _salt_for: Callable[[str], bytes]
    block_size: int | None
    # Offloads in flight by the hash of their first block, and the lookups waiting for them.
    _offloads_by_root: dict[bytes, int]
    _deferred_lookups: dict[bytes, list[Request]]

    # Provided by SchedulerCore.
    def _slot_of(self, req: Request | None) -> WorkerSlot | None: ...
    def _reset_for_recompute(self, req: Request) -> None: ...

    @property
    def retain(self) -> bool:
        return self.config.retain  # type: ignore[attr-defined, no-any-return]

    # ------------------------------------------------------------ hashes

    def hashes(self, req: Request, num_blocks: int) -> list[bytes]:
        """Content addresses of the request's first `num_blocks` full blocks (cached)."""
        assert self.block_size is not None
        if len(req.hashes) < num_blocks:
            tokens = req.token_at(0, num_blocks * self.block_size)
            extend_chain(
                req.hashes, tokens, self.block_size, self._salt_for(req.tenant), num_blocks
            )
        return req.hashes[:num_blocks]

    def _order_hashes(self, req: Request, first: int, count: int, tokens: int) -> tuple[bytes, ...]:
        """Hashes for host blocks [first, first+count) of a copy covering `tokens` tokens."""
        if not self.retain:
            return ()
        assert self.block_size is not None
        full = tokens // self.block_size
        chain = self.hashes(req, min(full, first + count))
        return tuple(chain[i] if i < full else b"" for i in range(first, first + count))

    # ------------------------------------------------------- host answers

    def on_reserved(self, seq: int, lease_id: str, host_blocks: list[int]) -> None:
        """The store reserved host blocks: the swap-out (or offload) goes in the next plan."""
        req = self._by_seq.get(seq)
        slot = self._slot_of(req)
        wanted = req is not None and (
            req.status == Status.SWAPPING_OUT or (req.is_finished and req.offloading)
        )
        if req is None or slot is None or not wanted or req.swap_lease:
            self._host_ops.append(HostOp(HostOpKind.RELEASE, seq, lease_id=lease_id))
            return
        first = len(req.host_blocks)
        device = slot.allocator.block_ids(seq)[first : first + len(host_blocks)]
        req.swap_lease = lease_id
        req.swap_host_blocks = list(host_blocks)
        req.swap_sent = True
        hashes = self._order_hashes(req, first, len(host_blocks), req.swap_tokens)
        slot.swap_out_orders.append(
            SwapOrder(
                seq,
                tuple(pair_runs(device, host_blocks)),
                lease_id,
                hashes,
                req.tenant,
                req.retain_ttl_s or 0.0,
            )
        )

    def on_pinned(self, seq: int, lease_id: str) -> None:
        """The host copy is pinned: SeqStart + SwapIn go in the next plan."""
        req = self._by_seq.get(seq)
        slot = self._slot_of(req)
        if req is None or slot is None or req.status != Status.SWAPPING_IN or req.swap_sent:
            self._host_ops.append(HostOp(HostOpKind.RELEASE, seq, lease_id=lease_id))
            return
        n = len(req.host_blocks)
        device = slot.allocator.block_ids(seq)
        req.swap_lease = lease_id
        req.swap_sent = True
        start = SeqStart(
            seq=seq,
            sampling=req.sampling,
            position=req.num_computed,
            last_token=req.output_ids[-1] if req.decode_ready else None,
            num_generated=len(req.output_ids),
            blocks=slot.allocator.groups(seq),
        )
        order = SwapOrder(seq, tuple(pair_runs(device[:n], req.host_blocks)), lease_id)
        slot.swap_in_orders.append((start, order))

    def on_looked_up(self, seq: int, host_blocks: list[int]) -> None:
        """A new prompt's retained prefix: resume it from the host at that length."""
        req = self._by_seq.get(seq)
        if req is None or req.lookup != LookupState.PENDING:
            return
        req.lookup = LookupState.DONE
        if not host_blocks or req.status != Status.WAITING or req.num_computed:
            return
        assert self.block_size is not None
        n = len(host_blocks)
        req.host_blocks = list(host_blocks)
        req.host_hashes = self.hashes(req, n)
        req.host_tokens = req.num_computed = n * self.block_size
        req.prompt_charged = req.num_computed  # fairness charges computed work, not cache hits
        req.cached_prompt_tokens = req.num_computed
        req.status = Status.SWAPPED
        self.counters.reuse_hit_tokens += req.num_computed  # type: ignore[attr-defined]
        self.counters.retained_hit_blocks += n  # type: ignore[attr-defined]

    def on_host_failed(self, seq: int, kind: HostOpKind, message: str) -> None:
        """A reserve, pin or lookup failed (host memory short, evicted, lease lost)."""
        req = self._by_seq.get(seq)
        if req is None:
            return
        if kind is HostOpKind.LOOKUP:
            req.lookup = LookupState.DONE
            return
        slot = self._slot_of(req)
        if req.is_finished:  # an offload that could not get host memory: just let it go
            if slot is not None and req.offloading and not req.swap_sent:
                self._release_after_swap(slot, req, [])
            return
        log.warning(
            "host op failed; recomputing", extra={"seq": seq, "op": kind.value, "why": message}
        )
        if slot is not None and req.status in (Status.SWAPPING_OUT, Status.SWAPPING_IN):
            slot.allocator.free(seq)
            del slot.running[seq]
            if req.resident:
                slot.pending_drop.append(seq)
        elif req.status == Status.SWAPPED:
            self._waiting = [r for r in self._waiting if r.seq != seq]
        self._reset_for_recompute(req)
        self._waiting.append(req)

    # ---------------------------------------------------------- transitions

    def _begin_lookup(self, req: Request) -> None:
        """Looks up a new prompt's retained prefix (all full blocks but the one to sample)."""
        assert self.block_size is not None
        n = (len(req.prompt_ids) - 1) // self.block_size
        if not self.retain or n <= 0:
            req.lookup = LookupState.DONE
            return
        root = self.hashes(req, 1)[0]
        if root in self._offloads_by_root:
            # The previous turn of this conversation is still being offloaded: a lookup now
            # would miss what a few milliseconds will retain. Look up once it is committed.
            req.lookup = LookupState.DEFERRED
            self._deferred_lookups.setdefault(root, []).append(req)
            return
        req.lookup = LookupState.PENDING
        self.counters.retained_lookups += 1  # type: ignore[attr-defined]
        self._host_ops.append(HostOp(HostOpKind.LOOKUP, req.seq, hashes=tuple(self.hashes(req, n))))

    def _begin_swap_out(self, slot: WorkerSlot, req: Request, plan: StepPlan) -> None:
        """Swap-out: host blocks are reserved for what the host lacks; blocks stay until done."""
        bs = slot.info.block_size
        keep = req.host_tokens // bs if self.config.kv_reuse else 0  # type: ignore[attr-defined]
        self._drop_host_blocks(req, keep)
        need = slot.info.blocks_for(req.num_computed) - keep
        req.status = Status.SWAPPING_OUT
        req.swap_tokens = req.num_computed
        self.counters.swap_bytes_avoided += keep * slot.info.block_bytes  # type: ignore[attr-defined]
        if need == 0:  # the host holds it all already: nothing to copy
            self._swapped_out(slot, req, plan.drop)
            return
        self._host_ops.append(HostOp(HostOpKind.RESERVE, req.seq, num_blocks=need))

    def _begin_offload(self, slot: WorkerSlot, req: Request) -> bool:
        """A finished request's full blocks the host lacks are copied out and retained (6).
        False when there is nothing to offload (the caller frees at once)."""
        bs = slot.info.block_size
        full = req.num_computed // bs
        keep = min(req.host_tokens // bs, full)
        if not self.retain or req.retain_ttl_s is None or full <= keep or not req.resident:
            return False
        self._drop_host_blocks(req, keep)
        req.offloading = True
        root = self.hashes(req, 1)[0]
        self._offloads_by_root[root] = self._offloads_by_root.get(root, 0) + 1
        req.swap_tokens = full * bs
        self.counters.offloaded_blocks += full - keep  # type: ignore[attr-defined]
        self._host_ops.append(HostOp(HostOpKind.RESERVE, req.seq, num_blocks=full - keep))
        return True

    def _end_offload(self, req: Request) -> None:
        """An offload is over (committed, refused, or its worker gone): deferred lookups of the
        same prefix go ahead."""
        if not req.offloading:
            return
        req.offloading = False
        root = req.hashes[0]
        left = self._offloads_by_root[root] - 1
        if left:
            self._offloads_by_root[root] = left
            return
        del self._offloads_by_root[root]
        for waiting in self._deferred_lookups.pop(root, []):
            if waiting.lookup == LookupState.DEFERRED and waiting.status == Status.WAITING:
                waiting.lookup = LookupState.NONE
                self._begin_lookup(waiting)

    def _swapped_out(self, slot: WorkerSlot, req: Request, drops: list[int]) -> None:
        """Rule 1: the copy is done, so the device blocks go back and the worker forgets it
        (`drops`: the plan that must carry the drop before the blocks are given again)."""
        self._adopt_swap_copy(req)
        req.swap_outs += 1
        self.counters.swap_outs += 1  # type: ignore[attr-defined]
        slot.allocator.free(req.seq)
        del slot.running[req.seq]
        drops.append(req.seq)
        req.resident = False
        req.worker_id = None
        req.status = Status.SWAPPED
        self._waiting.append(req)

    def _adopt_swap_copy(self, req: Request) -> None:
        """The copy is committed: its blocks become (the tail of) the host copy."""
        first = len(req.host_blocks)
        req.host_blocks.extend(req.swap_host_blocks)
        req.host_hashes.extend(
            self._order_hashes(req, first, len(req.swap_host_blocks), req.swap_tokens)
            or [b""] * len(req.swap_host_blocks)
        )
        req.host_tokens = req.swap_tokens
        self._clear_swap(req)

    def _drop_host_blocks(self, req: Request, keep: int) -> None:
        """Keeps the first `keep` host blocks; frees the private ones after them."""
        self._free_private(req.seq, req.host_blocks[keep:], req.host_hashes[keep:])
        del req.host_blocks[keep:]
        del req.host_hashes[keep:]
        req.host_tokens = min(req.host_tokens, keep * (self.block_size or 0))

    def _release_host_copy(self, req: Request) -> None:
        """Forgets the host copy: private blocks are freed, retained ones stay as cache."""
        self._drop_host_blocks(req, 0)
        req.host_tokens = 0

    def _free_private(self, seq: int, blocks: list[int], hashes: list[bytes]) -> None:
        private = tuple(b for i, b in enumerate(blocks) if i >= len(hashes) or not hashes[i])
        if private:
            self._host_ops.append(HostOp(HostOpKind.FREE, seq, blocks=private))

    def _clear_swap(self, req: Request) -> None:
        req.swap_host_blocks = []
        req.swap_lease = ""
        req.swap_sent = False

    def _release_after_swap(self, slot: WorkerSlot, req: Request, host_blocks: list[int]) -> None:
        """A finished request whose copy is over: free its device blocks now (rule 1)."""
        slot.allocator.free(req.seq)
        slot.running.pop(req.seq, None)
        slot.pending_drop.append(req.seq)
        if host_blocks:
            self._free_private(req.seq, host_blocks, [])
        self._clear_swap(req)
        self._end_offload(req)
        req.resident = False
        self._release_host_copy(req)
        if req.request_id not in self._requests:
            self._by_seq.pop(req.seq, None)

    # --------------------------------------------------------- worker results

    def _apply_swap_results(self, slot: WorkerSlot, output: StepOutput) -> None:
        for seq in output.swap_out_done:
            slot.swaps_in_flight.discard(seq)
            req = self._by_seq.get(seq)
            if req is None:
                continue
            if seq in output.committed:  # duplicates of retained blocks were replaced
                req.swap_host_blocks = list(output.committed[seq])
            if req.status == Status.SWAPPING_OUT:
                self._swapped_out(slot, req, slot.pending_drop)
            elif req.offloading:
                self._release_after_swap(slot, req, [])  # retained: the store's cache now
            elif req.status == Status.RUNNING:
                self._adopt_swap_copy(req)  # cancelled too late, but the host copy is valid
            else:  # finished while copying: the blocks may go, and its private copy too
                hashes = self._order_hashes(
                    req, len(req.host_blocks), len(req.swap_host_blocks), req.swap_tokens
                )
                self._free_private(seq, req.swap_host_blocks, list(hashes))
                self._release_after_swap(slot, req, [])
        for seq in output.swap_out_cancelled:
            slot.swaps_in_flight.discard(seq)
            req = self._by_seq.get(seq)
            if req is None:
                continue
            if req.is_finished:
                self._release_after_swap(slot, req, [])
            else:
                self._clear_swap(req)
        for seq in output.swap_in_done:
            slot.swaps_in_flight.discard(seq)
            req = self._by_seq.get(seq)
            if req is None:
                continue
            self._clear_swap(req)
            if req.is_finished:
                self._release_after_swap(slot, req, [])
                continue
            req.status = Status.RUNNING
            req.just_swapped_in = True
            if not self.config.kv_reuse:  # type: ignore[attr-defined]
                self._release_host_copy(req)
