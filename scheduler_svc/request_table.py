"""The request table: every request the scheduler knows, by id and by seq; tenant tallies."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from scheduler_svc.request import Request


@dataclass(slots=True)
class TenantTally:
    """Service a tenant has received since the scheduler started."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    finished: int = 0


class RequestTable:
    """Owns the table of requests by id (what the API names) and by seq (what the step stream
    names), the seq numbering, each tenant's count of live requests and its tally.

    Called by the core (submit, finish, forget) and by the swap controller (results by seq).
    Invariant: a request is in ``by_seq`` while it is in the table, and after it is forgotten only
    while a copy still reads or writes its blocks; a tenant's live count is the number of its
    unfinished requests (tenants with none have no entry); every tenant with a tally is live or
    idle (in ``_idle``, oldest first, with the time its last live request finished), never both.
    Idle tenants are pruned (``prune_idle``, ``make_room``): their tally goes, so the table and
    the stats stay bounded by the tenants that are actually active.
    """

    def __init__(self) -> None:
        self._seqs = itertools.count(1)
        self._by_id: dict[str, Request] = {}
        self._by_seq: dict[int, Request] = {}
        self._live: dict[str, int] = {}
        self.tallies: dict[str, TenantTally] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()
        self.tenants_added = 0  # tenants ever given a tally (the metrics label new ones)

    def next_seq(self) -> int:
        return next(self._seqs)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._by_id

    def get(self, request_id: str) -> Request | None:
        return self._by_id.get(request_id)

    def by_seq(self, seq: int) -> Request | None:
        return self._by_seq.get(seq)

    def live(self) -> dict[str, int]:
        """tenant -> live (unfinished) requests; the policy reads it when a tenant activates."""
        return self._live

    def is_active(self, tenant: str) -> bool:
        return self._live.get(tenant, 0) > 0

    def add(self, req: Request) -> None:
        """Enters a new request (its id is free) and counts it live for its tenant."""
        self._by_id[req.request_id] = req
        self._by_seq[req.seq] = req
        self._live[req.tenant] = self._live.get(req.tenant, 0) + 1
        self._idle.pop(req.tenant, None)
        if req.tenant not in self.tallies:
            self.tallies[req.tenant] = TenantTally()
            self.tenants_added += 1

    def on_finished(self, req: Request, now: float) -> None:
        """A request finished: one live request less; a tenant left with none becomes idle."""
        self.tallies[req.tenant].finished += 1
        left = self._live.get(req.tenant, 1) - 1
        if left > 0:
            self._live[req.tenant] = left
            return
        self._live.pop(req.tenant, None)
        self._idle[req.tenant] = now
        self._idle.move_to_end(req.tenant)

    def knows_tenant(self, tenant: str) -> bool:
        return tenant in self.tallies

    @property
    def num_tenants(self) -> int:
        """Tenants in the table: live ones and idle ones not pruned yet."""
        return len(self.tallies)

    def prune_idle(self, now: float, idle_s: float) -> list[str]:
        """Drops tenants idle for at least `idle_s` (no live request since); returns them.
        O(1) per tenant dropped: the oldest idle tenant is first in ``_idle``."""
        gone: list[str] = []
        while self._idle:
            tenant, since = next(iter(self._idle.items()))
            if now - since < idle_s:
                break
            gone.append(self._drop_idle(tenant))
        return gone

    def make_room(self) -> str | None:
        """Drops the longest idle tenant, however recent (the table is full); None when every
        tenant in it has a live request."""
        if not self._idle:
            return None
        return self._drop_idle(next(iter(self._idle)))

    def _drop_idle(self, tenant: str) -> str:
        del self._idle[tenant]
        del self.tallies[tenant]
        return tenant

    def forget(self, request_id: str) -> None:
        """Drops a finished request by id; by seq too unless a copy is still on its blocks."""
        req = self._by_id.get(request_id)
        if req is not None and req.is_finished:
            del self._by_id[request_id]
            if not (req.swap_sent or req.offloading):
                self._by_seq.pop(req.seq, None)

    def release_seq(self, req: Request) -> None:
        """A forgotten request's last copy is over: its seq goes too."""
        if req.request_id not in self._by_id:
            self._by_seq.pop(req.seq, None)

    def all_seqs(self) -> list[Request]:
        """Every request known by seq: the table, and forgotten ones whose copy is not over."""
        return list(self._by_seq.values())

    def __iter__(self) -> Iterator[Request]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def sizes(self) -> dict[str, int]:
        """Entries of each table (the memory debug aid logs them, servekit/memtrace.py)."""
        return {
            "by_id": len(self._by_id),
            "by_seq": len(self._by_seq),
            "live_tenants": len(self._live),
            "idle_tenants": len(self._idle),
        }

    def check_integrity(self) -> None:
        live: dict[str, int] = {}
        for rid, req in self._by_id.items():
            assert req.request_id == rid and self._by_seq.get(req.seq) is req, f"table {rid}"
            if not req.is_finished:
                live[req.tenant] = live.get(req.tenant, 0) + 1
        for seq, req in self._by_seq.items():
            kept = req.request_id in self._by_id or req.swap_sent or req.offloading
            assert req.seq == seq and kept, f"stale seq {seq}"
        for tenant, n in self._live.items():
            assert n == live.get(tenant, 0), f"tenant {tenant}: {n} live, {live.get(tenant)}"
        assert set(live) == set(self._live), "a tenant's live count is missing"
        assert not set(self._idle) & set(self._live), "a tenant is both live and idle"
        assert set(self._idle) | set(self._live) == set(self.tallies), "a tally without a state"
