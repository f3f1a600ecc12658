"""The scheduler core: request table, queues, per-worker planning. Plain code, no gRPC.

One iteration for one worker (``schedule``) reads as::

    plan   = what the worker is owed (drops, swap orders whose host side is ready)
           + preemption by rank (every priority_update_interval iterations)
           + running requests, best-ranked first (decode, or the next prefill chunk)
           + waiting and swapped requests admitted while budget, batch slots and blocks last
    output = the worker runs the plan                       (outside the core)
    events = update_from_output(worker, output)             (tokens, swap completions, errors)

The core owns every worker's block-group allocator: a worker never decides what it allocates.
Capacity is asked before it is taken. Preemption is by swap (the KV goes to the host arena and
comes back later, possibly on another worker) or by recompute (the KV is dropped and the token ids
prefilled again). Context-switch rules (docs/architecture.md):

1. a swapping-out request's device blocks are freed only once the worker reports the copy done;
2. a swapping-in request is in no forward until its swap-in is reported done;
3. a request chosen to run while still swapping out cancels the swap-out and keeps its blocks;
5. after a swap-in the host copy stays valid: the next swap-out copies only the blocks the host
   lacks (``kv_reuse``).

Host-memory work (reserve, pin, free) is queued as HostOps for the frontend to run (host_ops.py).

The core is composed of small parts, each with its own state and its share of
``check_integrity``::

    RequestTable    requests by id and seq, live counts, tenant tallies     request_table.py
    WorkerRegistry  the workers, their slots and allocators                 workers.py
    WaitQueue       waiting and swapped requests                            waiting.py
    HostCopies      host copies, content hashes, the host index, HostOps    host_copies.py
    SwapController  swap-out, swap-in, offload, swap results                swaps.py
    Admission       budget, running, waiting, preemption                    admission.py
    Placement       which worker takes a waiting request (cache locality)   placement.py
"""

from __future__ import annotations

import copy
import itertools
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping

from scheduler_svc.admission import Admission, AdmissionLimits
from scheduler_svc.config import CoreConfig
from scheduler_svc.errors import InvalidArgument, ResourceExhausted
from scheduler_svc.fetch_cost import HostFetch, count_runs, fetch_pays
from scheduler_svc.host_copies import HostCopies
from scheduler_svc.host_ops import HostOp, HostOpKind
from scheduler_svc.placement import Placement, PlacementLimits
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.policy import Policy
from scheduler_svc.request import (
    Fault,
    FinishReason,
    GenerationLimits,
    Request,
    Sampling,
    Status,
    TokenEvent,
)
from scheduler_svc.request_table import RequestTable, TenantTally
from scheduler_svc.stats import Counters, SchedulerStats, TenantStats
from scheduler_svc.swaps import HostWrite, SwapController
from scheduler_svc.waiting import WaitQueue
from scheduler_svc.workers import InFlight, WorkerInfo, WorkerRegistry, WorkerSlot
from servekit.validation import clip

log = logging.getLogger(__name__)


class SchedulerCore:
    """The scheduler's front door: workers join and leave, requests are submitted and cancelled,
    each worker's next plan is made and its output applied, and stats are read.

    Owns the parts it is composed of (see the module docstring) and wires them once; keeps no
    request state of its own. Called by the frontend (on the event loop thread, so no locks) and
    by the host agent's answers. ``check_integrity`` checks every part.
    """

    def __init__(
        self,
        config: CoreConfig,
        policy: Policy,
        *,
        eos_token_ids: Iterable[int],
        clock: Callable[[], float] = time.monotonic,
        model_fingerprint: str = "",
        secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.counters = Counters()
        self._eos = frozenset(eos_token_ids)
        self._clock = clock
        self._table = RequestTable()
        self._workers = WorkerRegistry(config.growth_allowance, self.counters)
        self._waiting = WaitQueue()
        self._host_fetch = HostFetch(config.host_fetch)
        self.store_round_trip_s = 0.0
        self._host = HostCopies(
            retain=config.retain,
            secret=secret if secret is not None else secrets.token_bytes(16),
            model_fingerprint=model_fingerprint,
            block_size=lambda: self._workers.block_size,
            counters=self.counters,
            share_groups=config.shared_prefix_tenants,
            fetch_pays=self._fetch_pays,
        )
        self._swaps = SwapController(
            kv_reuse=config.kv_reuse,
            device_prefix_cache=config.device_prefix_cache,
            host_write=HostWrite(config.host_write),
            table=self._table,
            workers=self._workers,
            waiting=self._waiting,
            host=self._host,
            counters=self.counters,
        )
        limits = AdmissionLimits(
            max_batched_tokens=config.max_batched_tokens,
            max_num_seqs=config.max_num_seqs,
            max_prefill_chunk=config.max_prefill_chunk,
            swap=config.preemption == "swap",
            min_swap_tokens=config.min_swap_tokens,
            priority_update_interval=config.priority_update_interval,
            preempt_margin=config.preempt_margin,
            device_prefix_cache=config.device_prefix_cache,
        )
        placement = Placement(
            PlacementLimits(
                margin=config.preempt_margin,
                max_waits=config.locality_max_waits,
                max_num_seqs=config.max_num_seqs,
                max_batched_tokens=config.max_batched_tokens,
                max_prefill_chunk=config.max_prefill_chunk,
            ),
            policy,
            workers=self._workers,
            host=self._host,
            counters=self.counters,
            enabled=config.device_prefix_cache,
        )
        self._admission = Admission(
            limits,
            policy,
            table=self._table,
            waiting=self._waiting,
            swaps=self._swaps,
            host=self._host,
            placement=placement,
            counters=self.counters,
        )

    # ------------------------------------------------------------------ workers

    @property
    def block_size(self) -> int | None:
        return self._workers.block_size

    def add_worker(self, info: WorkerInfo) -> WorkerSlot:
        """A worker joins. AlreadyExists or FailedPrecondition (nothing changed) for a taken id
        or another block size."""
        return self._workers.add(info)

    def remove_worker(self, worker_id: str) -> int:
        """Forgets a worker; its requests are queued again, to be recomputed. Returns how many."""
        slot = self._workers.pop(worker_id)
        if slot is None:
            return 0
        for req in list(slot.running.values()):
            if req.is_finished:
                self._host.take_stale(req.seq)
                self._host.end_offload(req)
                self._host.release(req)
                self._table.release_seq(req)
                continue
            self._swaps.requeue_for_recompute(req)  # a copy's lease expires in the store
        log.info("worker left", extra={"worker": worker_id, "requeued": len(slot.running)})
        return len(slot.running)

    @property
    def workers(self) -> Mapping[str, WorkerSlot]:
        return self._workers.slots()

    # ----------------------------------------------------------------- requests

    def submit(
        self,
        *,
        prompt_ids: list[int],
        sampling: Sampling,
        limits: GenerationLimits,
        tenant: str = "default",
        priority: int = 0,
        request_id: str | None = None,
        retain_ttl_s: float | None = None,
    ) -> Request:
        """Queues a validated request. Raises InvalidArgument (its id is taken) or
        ResourceExhausted (the queue is full, or it can never fit a worker)."""
        if not request_id:
            request_id = uuid.uuid4().hex
        if request_id in self._table:
            raise InvalidArgument(f"request id {clip(request_id)} is already in use")
        self.prune_idle_tenants()
        if not self._table.knows_tenant(tenant) and self._table.num_tenants >= (
            self.config.max_tenants
        ):
            gone = self._table.make_room()
            if gone is None:
                raise ResourceExhausted(
                    f"too many tenants with live requests (at most {self.config.max_tenants})"
                )
            self.policy.on_pruned(gone)
        if len(self._waiting) >= self.config.max_waiting:
            raise ResourceExhausted(
                f"the queue is full ({self.config.max_waiting} waiting requests)"
            )
        need = len(prompt_ids) + limits.max_tokens
        largest = self._workers.largest_capacity()
        if largest is not None and need > largest:
            raise ResourceExhausted(
                f"prompt ({len(prompt_ids)}) + max_tokens ({limits.max_tokens}) = {need} tokens"
                f" exceed the largest worker's KV capacity of {largest} tokens"
            )
        req = Request(
            request_id=request_id,
            seq=self._table.next_seq(),
            tenant=tenant,
            prompt_ids=list(prompt_ids),
            sampling=sampling,
            limits=limits,
            arrival_s=self._clock(),
            priority=priority,
            retain_ttl_s=retain_ttl_s,
        )
        if not self._table.is_active(tenant):
            self.policy.on_activate(tenant, self._table.live())
        self._table.add(req)
        self._waiting.append(req)
        if self._workers.block_size is not None:
            self._host.look_up_prefix(req)
        return req

    def retained_hashes(self, tenant: str, token_ids: list[int]) -> list[bytes]:
        """Content addresses of `token_ids`' full blocks for `tenant` (a conversation's KV)."""
        return self._host.retained_hashes(tenant, token_ids)

    def free_retained(self, tenant: str, token_ids: list[int]) -> int:
        """Drops the retained blocks of `token_ids` (a deleted conversation), and the unshared
        blocks every worker holds cached for them; how many host blocks were asked."""
        if self.config.device_prefix_cache:
            hashes = self._host.retained_hashes(tenant, token_ids)
            for slot in self._workers:
                slot.allocator.drop_cached(hashes)
        return self._host.free_retained(tenant, token_ids)

    def get(self, request_id: str) -> Request | None:
        return self._table.get(request_id)

    def cancel(self, request_id: str) -> TokenEvent | None:
        """Cancels a live request: its blocks are freed (after any copy in flight)."""
        req = self._table.get(request_id)
        if req is None or req.is_finished:
            return None
        self._finish(req, FinishReason.CANCELLED)
        return TokenEvent(req, (), True)

    def abort(self, request_id: str, message: str, fault: Fault) -> TokenEvent | None:
        """Ends a live request through a server fault (shutdown, an internal failure): it
        finishes as ABORTED with `fault` and `message`, its blocks freed as on a cancel."""
        req = self._table.get(request_id)
        if req is None or req.is_finished:
            return None
        req.finish_message = message
        req.fault = fault
        self._finish(req, FinishReason.ABORTED)
        return TokenEvent(req, (), True)

    def finish_on_stop_string(self, request_id: str) -> None:
        """The request's output text has reached one of its stop strings (matched by the
        frontend on the token that completed it, before any further step): it finishes now as
        STOP, like a stop token — its device blocks are freed (or first offloaded when it is
        retained). One that this very token already finished by length is reported as STOP."""
        req = self._table.get(request_id)
        if req is None:
            return
        if not req.is_finished:
            self._finish(req, FinishReason.STOP)
        elif req.finish_reason is FinishReason.LENGTH:
            req.finish_reason = FinishReason.STOP

    def set_priority(self, request_id: str, priority: int) -> bool:
        req = self._table.get(request_id)
        if req is None or req.is_finished:
            return False
        req.priority = priority
        return True

    def forget(self, request_id: str) -> None:
        """Drops a finished request from the table (after its stream has ended)."""
        self._table.forget(request_id)

    # ------------------------------------------------------------- host agent

    @property
    def has_host_ops(self) -> bool:
        return self._host.has_ops

    def take_host_ops(self) -> list[HostOp]:
        return self._host.take()

    def on_reserved(
        self, seq: int, lease_id: str, host_blocks: list[int], ticket: int | None = None
    ) -> None:
        """The store reserved host blocks: the swap-out (or offload) goes in the next plan
        (`ticket`: the reserve's, so that a late answer is not taken for a later swap)."""
        self._swaps.on_reserved(seq, lease_id, host_blocks, ticket)

    def on_pinned(self, seq: int, lease_id: str, ticket: int | None = None) -> None:
        """The host copy is pinned: SeqStart + SwapIn go in the next plan."""
        self._swaps.on_pinned(seq, lease_id, ticket)

    def on_host_failed(
        self, seq: int, kind: HostOpKind, message: str, ticket: int | None = None
    ) -> None:
        """A reserve or pin failed (host memory short, evicted, lease lost)."""
        self._swaps.on_host_failed(seq, kind, message, ticket)

    def note_store_round_trip(self, seconds: float) -> None:
        """The host agent timed a call to the KV store: the round trip a pin costs a fetch."""
        if self.store_round_trip_s == 0.0:
            self.store_round_trip_s = seconds
        else:  # a moving average: one slow call under load does not turn every fetch down
            self.store_round_trip_s += 0.1 * (seconds - self.store_round_trip_s)

    def _fetch_pays(self, host_blocks: list[int]) -> bool:
        """Whether a new prompt's retained prefix in `host_blocks` is worth fetching."""
        costs, block_bytes = self._workers.costs()
        return fetch_pays(
            self._host_fetch,
            costs,
            num_tokens=len(host_blocks) * (self._workers.block_size or 0),
            num_blocks=len(host_blocks),
            num_runs=count_runs(host_blocks),
            block_bytes=block_bytes,
            round_trip_s=self.store_round_trip_s,
        )

    def on_store_lost(self) -> None:
        """The KV store died or restarted: every host copy is forgotten and the requests that
        needed one are recomputed (``SwapController.on_store_lost``)."""
        self.counters.store_losses += 1
        self._swaps.on_store_lost()
        log.warning(
            "KV store lost; host copies forgotten", extra={"losses": self.counters.store_losses}
        )

    # ---------------------------------------------------------------- planning

    def has_work(self, worker_id: str) -> bool:
        slot = self._workers.get(worker_id)
        return slot is not None and bool(
            slot.running or slot.pending_drop or self._waiting or slot.swaps_in_flight
        )

    def schedule(self, worker_id: str) -> StepPlan | None:
        """The next plan for `worker_id`, or None when it has nothing to do."""
        t0 = time.perf_counter()
        try:
            return self._schedule(worker_id)
        finally:
            self.counters.schedule_s += time.perf_counter() - t0

    def _schedule(self, worker_id: str) -> StepPlan | None:
        slot = self._workers[worker_id]
        ahead = 1 if self.config.async_scheduling else 0
        if len(slot.in_flight) > ahead:
            raise RuntimeError(
                f"worker {worker_id} has {len(slot.in_flight)} plans unanswered; "
                f"at most {ahead} may be while the next is planned"
            )
        plan = StepPlan(step_id=slot.next_step_id, drop=slot.take_drops())
        slot.take_swap_orders(plan)
        self._admission.plan_step(slot, plan)
        if plan.is_empty and not slot.swaps_in_flight:
            return None
        slot.next_step_id += 1
        slot.in_flight.append(InFlight.of(plan))
        now = self._clock()
        for seq in itertools.chain(plan.decode, (c.seq for c in plan.prefill)):
            req = self._table.by_seq(seq)
            if req is not None and req.first_scheduled_s is None:
                req.first_scheduled_s = now
        return plan

    # ------------------------------------------------------------------ results

    def update_from_output(self, worker_id: str, output: StepOutput) -> list[TokenEvent]:
        """Applies a worker's step result: swap completions, new tokens, per-sequence errors."""
        t0 = time.perf_counter()
        try:
            return self._update_from_output(worker_id, output)
        finally:
            self.counters.schedule_s += time.perf_counter() - t0

    def _update_from_output(self, worker_id: str, output: StepOutput) -> list[TokenEvent]:
        slot = self._workers.get(worker_id)
        if slot is None:
            return []
        if not slot.in_flight or slot.in_flight[0].step_id != output.step_id:
            expected = slot.in_flight[0].step_id if slot.in_flight else None
            raise ValueError(
                f"worker {worker_id} answered step {output.step_id}, expected {expected}"
            )
        slot.in_flight.popleft()
        now = self._clock()
        slot.steps += 1
        slot.step_s_total += output.step_s
        slot.forward_s_total += output.forward_s
        slot.idle_s_total += output.idle_s
        slot.swap_out_bytes += output.swap_out_bytes
        slot.swap_in_bytes += output.swap_in_bytes
        self.counters.swap_out_bytes += output.swap_out_bytes
        self.counters.swap_in_bytes += output.swap_in_bytes
        self._swaps.apply(slot, output)
        events: list[TokenEvent] = []
        for seq, message in output.errors.items():
            slot.swaps_in_flight.discard(seq)  # an error ends whatever copy it had
            self._host.take_stale(seq)
            req = self._table.by_seq(seq)
            if req is not None and req.is_finished and req.seq in slot.running:
                # A finished request's copy failed (an offload): nothing is in flight any more,
                # so its blocks go and the lookups deferred behind it wake.
                self._swaps.swap_failed(slot, req)
            elif (
                req is not None
                and req.worker_id == worker_id
                and req.status in (Status.SWAPPING_OUT, Status.SWAPPING_IN)
            ):
                # Its copy failed or was refused (the worker could not reach the store's
                # arena): KV is a cache, so the request is recomputed (rule 7), not aborted.
                kind = HostOpKind.PIN if req.status == Status.SWAPPING_IN else HostOpKind.RESERVE
                self._swaps.on_host_failed(seq, kind, message)
            elif req is not None and not req.is_finished and req.worker_id == worker_id:
                req.finish_message = f"worker {worker_id} failed on this request: {message}"
                req.fault = Fault.ABORTED
                self._finish(req, FinishReason.ABORTED)
                events.append(TokenEvent(req, (), True))
        for seq, token in output.sampled.items():
            req = self._table.by_seq(seq)
            if req is None or req.is_finished or req.worker_id != worker_id:
                # Cancelled, finished (a plan made ahead decoded past its last token) or
                # moved while the step ran: nobody sees this token.
                self.counters.discarded_tokens += 1
                continue
            req.output_ids.append(token)
            req.decode_ready = True
            req.token_times.append(now)
            self.policy.on_served(req.tenant, 0, 1)
            self._table.tallies[req.tenant].output_tokens += 1
            reason = self._finish_reason(req, token, slot.info.max_model_len)
            if reason is not None:
                self._finish(req, reason)
            events.append(TokenEvent(req, (token,), reason is not None))
        return events

    def _finish_reason(self, req: Request, token: int, max_model_len: int) -> FinishReason | None:
        if token in req.limits.stop_token_ids or (token in self._eos and not req.limits.ignore_eos):
            return FinishReason.STOP
        if len(req.output_ids) >= req.limits.max_tokens or req.num_tokens >= max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, req: Request, reason: FinishReason) -> None:
        slot = self._workers.slot_of(req)
        if slot is not None and req.seq in slot.running:
            if req.status == Status.RUNNING:
                # KV that plans still running write is not known to be written (such a plan
                # may yet fail): the device cache and an offload take only what was reported.
                req.num_computed -= slot.unreported(req.seq)
            self._leave_device(slot, req, reason)
        if req.status in (Status.WAITING, Status.SWAPPED):
            self._waiting.remove(req.seq)
        if not (req.swap_sent or req.offloading):
            self._host.release(req)  # else once the copy is over
        req.status = Status.FINISHED
        req.finish_reason = reason
        req.finished_s = self._clock()
        req.resident = req.resident and (req.swap_sent or req.offloading)
        if reason is FinishReason.CANCELLED:
            self.counters.cancelled += 1
        elif reason is FinishReason.ABORTED:
            self.counters.failed += 1
        else:
            self.counters.finished += 1
        self._table.on_finished(req, req.finished_s)

    def _leave_device(self, slot: WorkerSlot, req: Request, reason: FinishReason) -> None:
        """A finishing request's device blocks go now, or once a copy of them is over."""
        if req.swap_sent:
            # A copy is reading or writing its device blocks: they go when it is done.
            if req.status == Status.SWAPPING_OUT:
                slot.cancel_swap_out.append(req.seq)
            return
        if (
            reason in (FinishReason.STOP, FinishReason.LENGTH)
            and req.status == Status.RUNNING
            and self._swaps.begin_offload(slot, req)
        ):
            return  # its blocks go once the offload is copied (rule 1), then are retained
        slot.running.pop(req.seq)
        # The device tier keeps the full blocks of KV that was computed (not of a failure).
        whole = req.status == Status.RUNNING and reason is not FinishReason.ABORTED
        slot.allocator.free(req.seq, cache=self._swaps.cache_hashes(slot, req) if whole else ())
        if req.resident:
            slot.pending_drop.append(req.seq)
        if req.swap_lease is not None:
            self._host.release_lease(req.seq, req.swap_lease)

    # -------------------------------------------------------------------- stats

    def _resident(self) -> Iterable[Request]:
        return (r for w in self._workers for r in w.running.values())

    def num_waiting(self) -> int:
        return self._waiting.count(Status.WAITING)

    def num_swapped(self) -> int:
        moving = (Status.SWAPPING_OUT, Status.SWAPPING_IN)
        return self._waiting.count(Status.SWAPPED) + sum(
            1 for r in self._resident() if r.status in moving
        )

    def num_running(self) -> int:
        return sum(1 for r in self._resident() if r.status == Status.RUNNING)

    @property
    def tallies(self) -> Mapping[str, TenantTally]:
        """tenant -> its tally, for the tenants in the table, in the order they entered it."""
        return self._table.tallies

    @property
    def tenants_added(self) -> int:
        """Tenants ever entered in the table (pruned ones included)."""
        return self._table.tenants_added

    def tenants(self) -> dict[str, tuple[int, int]]:
        """tenant -> (waiting or swapped, running)."""
        out: dict[str, tuple[int, int]] = {}
        for req in self._waiting:
            w, r = out.get(req.tenant, (0, 0))
            out[req.tenant] = (w + 1, r)
        for req in self._resident():
            w, r = out.get(req.tenant, (0, 0))
            out[req.tenant] = (w, r + 1)
        return out

    def prune_idle_tenants(self) -> list[str]:
        """Tenants idle (no waiting or running request) for ``config.tenant_idle_s`` leave the
        table and the stats; the policy keeps what fairness needs of them (``on_pruned``)."""
        gone = self._table.prune_idle(self._clock(), self.config.tenant_idle_s)
        for tenant in gone:
            self.policy.on_pruned(tenant)
        return gone

    def stats(self) -> SchedulerStats:
        """A snapshot of queues, counters, tenants (idle ones pruned first) and workers."""
        self.prune_idle_tenants()
        queued = self.tenants()
        tenants = []
        for tenant, tally in sorted(self._table.tallies.items()):
            waiting, running = queued.get(tenant, (0, 0))
            tenants.append(
                TenantStats(
                    tenant=tenant,
                    virtual_counter=self.policy.counter(tenant),
                    weight=self.policy.weight(tenant),
                    prompt_tokens=tally.prompt_tokens,
                    output_tokens=tally.output_tokens,
                    waiting=waiting,
                    running=running,
                    finished=tally.finished,
                )
            )
        return SchedulerStats(
            waiting=self.num_waiting(),
            running=self.num_running(),
            swapped=self.num_swapped(),
            counters=copy.copy(self.counters),
            tenants=tuple(tenants),
            workers=tuple(s.stats() for _, s in sorted(self._workers.slots().items())),
            store_round_trip_s=self.store_round_trip_s,
        )

    def sizes(self) -> dict[str, int]:
        """Entries of the core's tables (the memory debug aid logs them, servekit/memtrace.py):
        none may grow with the number of requests served, only with those in flight."""
        return {
            **self._table.sizes(),
            "tallies": self._table.num_tenants,
            "waiting": len(self._waiting),
            "resident": sum(len(w.running) for w in self._workers),
            "workers": len(self._workers.slots()),
            **self._host.sizes(),
        }

    def check_integrity(self) -> None:
        """Raises AssertionError if any part disagrees with itself or with another."""
        self._table.check_integrity()
        resident = self._workers.check_integrity()
        self._waiting.check_integrity(resident)
        self._host.check_integrity(self._table.all_seqs())
