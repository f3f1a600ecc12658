"""The request table: every request the scheduler knows, by id and by seq; tenant tallies."""

from __future__ import annotations

import itertools
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
    unfinished requests.
    """

    def __init__(self) -> None:
        self._seqs = itertools.count(1)
        self._by_id: dict[str, Request] = {}
        self._by_seq: dict[int, Request] = {}
        self._live: dict[str, int] = {}
        self.tallies: dict[str, TenantTally] = {}

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
        self.tallies.setdefault(req.tenant, TenantTally())

    def on_finished(self, req: Request) -> None:
        self.tallies[req.tenant].finished += 1
        self._live[req.tenant] = self._live.get(req.tenant, 1) - 1

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
