"""The queue of requests that wait for a worker: new ones, recomputes, and swapped ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from scheduler_svc.request import Request, Status


class WaitQueue:
    """Owns the WAITING (never run, or recomputing) and SWAPPED requests that are resident on no
    worker, ranked by the policy at each admission. Filled by the core (submit, a worker leaving),
    by admission (recompute) and by the swap controller (swapped out, host failure); emptied by
    admission. Invariant: every request in it is WAITING or SWAPPED, resident nowhere, and a
    SWAPPED one's host copy holds exactly its computed tokens."""

    def __init__(self) -> None:
        self._reqs: list[Request] = []

    def append(self, req: Request) -> None:
        self._reqs.append(req)

    def remove(self, seq: int) -> None:
        self._reqs = [r for r in self._reqs if r.seq != seq]

    def remove_all(self, seqs: set[int]) -> None:
        if seqs:
            self._reqs = [r for r in self._reqs if r.seq not in seqs]

    def rank(self, key: Callable[[Request], tuple[float, ...]]) -> list[Request]:
        """Sorts the queue by `key` in place (stable) and returns it, best first."""
        self._reqs.sort(key=key)
        return self._reqs

    def __iter__(self) -> Iterator[Request]:
        return iter(self._reqs)

    def __len__(self) -> int:
        return len(self._reqs)

    def __bool__(self) -> bool:
        return bool(self._reqs)

    def count(self, status: Status) -> int:
        return sum(1 for r in self._reqs if r.status == status)

    def check_integrity(self, resident: set[int]) -> None:
        for req in self._reqs:
            assert req.status in (Status.WAITING, Status.SWAPPED), f"bad queued {req.seq}"
            assert req.seq not in resident, f"request {req.seq} both queued and placed"
            if req.status == Status.SWAPPED:
                assert req.host_blocks and req.host_tokens == req.num_computed, f"{req.seq}"
