"""Host copies of requests' KV, their content addresses, and the queue of host-memory work.

Host copies: when retention is on, full blocks are content-addressed (``host_hashes[i]`` is a
hash): they belong to the store's cache once written (evictable, never freed by us); a partial
last block, and every block without retention, is private (hash None) and freed by us when no
longer needed. After a swap-in the host copy stays valid (rule 5), so a later swap-out copies only
the blocks after ``host_tokens``.

What the arena holds is known here without asking the store (``host_index.py``: the scheduler
orders every write into it), so a new prompt's retained prefix is matched at submit, on the
admission path's own thread, and the pin before its swap-in is its one round trip::

    arrive  ──▶ match the prompt's block hashes in the index ──▶ hit: SWAPPED at the cached length
    offload ──▶ prompts with the same root wait (`deferred`) until it is committed, then match
    commit  ──▶ the index learns the blocks; a pin that finds one gone drops them (recompute)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from scheduler_svc.host_index import HostIndex
from scheduler_svc.host_ops import HostOp, HostOpKind
from scheduler_svc.prefix_hash import chain_hashes, extend_chain, group_salt, tenant_salt
from scheduler_svc.request import Request, Status
from scheduler_svc.stats import Counters


class HostCopies:
    """Owns the tenant salts and content hashing, each request's host-copy bookkeeping
    (``host_blocks``, ``host_hashes``, ``host_tokens`` and the swap in flight), the index of what
    the arena holds, the offloads in flight by prefix and the prompts deferred behind them, and
    the queue of HostOps the frontend's host agent runs.

    Called by the core (submit, finish, host ops out), by the swap controller (every copy) and by
    admission (recompute). Invariants: a request's ``host_hashes`` parallel its ``host_blocks``;
    only private host blocks are ever freed by id; an offload in flight is counted under the hash
    of its first block until it ends.
    """

    def __init__(
        self,
        *,
        retain: bool,
        secret: bytes,
        model_fingerprint: str,
        block_size: Callable[[], int | None],
        counters: Counters,
        share_groups: Sequence[Sequence[str]] = (),
        fetch_pays: Callable[[list[int]], bool],
    ) -> None:
        self.retain = retain
        self._secret = secret
        self._fingerprint = model_fingerprint
        self._block_size = block_size
        self._counters = counters
        self._fetch_pays = fetch_pays  # whether to fetch a hit of these host blocks (fetch_cost)
        self._salts: dict[str, bytes] = {}
        # Declared sharing groups (prefix_hash.group_salt): each member hashes with its group's.
        self._group_of = {t: tuple(g) for g in share_groups for t in g}
        self._ops: list[HostOp] = []
        self.index = HostIndex()
        # Offloads in flight by the hash of their first block, and the prompts waiting for them.
        self._offloads_by_root: dict[bytes, int] = {}
        self._deferred: dict[bytes, list[Request]] = {}
        # Copies in flight when the store was lost: their commit, if any, went to a dead store.
        self._stale_swaps: set[int] = set()

    # ------------------------------------------------------------ the queue

    def queue(self, op: HostOp) -> None:
        self._ops.append(op)

    def release_lease(self, seq: int, lease_id: str) -> None:
        self._ops.append(HostOp(HostOpKind.RELEASE, seq, lease_id=lease_id))

    @property
    def has_ops(self) -> bool:
        return bool(self._ops)

    def take(self) -> list[HostOp]:
        ops, self._ops = self._ops, []
        return ops

    # -------------------------------------------------------------- hashes

    def _salt(self, tenant: str) -> bytes:
        salt = self._salts.get(tenant)
        if salt is None:
            group = self._group_of.get(tenant)
            salt = self._salts[tenant] = (
                group_salt(self._secret, group, self._fingerprint)
                if group
                else tenant_salt(self._secret, tenant, self._fingerprint)
            )
        return salt

    def _bs(self) -> int:
        bs = self._block_size()
        assert bs is not None, "no worker has joined: no block size yet"
        return bs

    def hashes(self, req: Request, num_blocks: int) -> list[bytes]:
        """Content addresses of the request's first `num_blocks` full blocks (cached)."""
        bs = self._bs()
        if len(req.hashes) < num_blocks:
            tokens = req.token_at(0, num_blocks * bs)
            extend_chain(req.hashes, tokens, bs, self._salt(req.tenant), num_blocks)
        return req.hashes[:num_blocks]

    def order_hashes(
        self, req: Request, first: int, count: int, tokens: int
    ) -> tuple[bytes | None, ...]:
        """Hashes for host blocks [first, first+count) of a copy covering `tokens` tokens
        (None: a private block); empty without retention."""
        if not self.retain:
            return ()
        full = tokens // self._bs()
        chain = self.hashes(req, min(full, first + count))
        return tuple(chain[i] if i < full else None for i in range(first, first + count))

    def retained_hashes(self, tenant: str, token_ids: list[int]) -> list[bytes]:
        """Content addresses of `token_ids`' full blocks for `tenant` (a conversation's KV)."""
        bs = self._block_size()
        if bs is None:
            return []
        return chain_hashes(token_ids, bs, self._salt(tenant))

    def free_retained(self, tenant: str, token_ids: list[int]) -> int:
        """Drops the retained blocks of `token_ids` (a deleted conversation); how many asked."""
        hashes = tuple(self.retained_hashes(tenant, token_ids))
        if hashes and self.retain:
            self.index.discard_hashes(hashes)
            self._ops.append(HostOp(HostOpKind.FREE, 0, hashes=hashes))
        return len(hashes) if self.retain else 0

    # --------------------------------------------------------- host copies

    def on_reserved(self, blocks: list[int]) -> None:
        """The store gave `blocks` out as free: whatever content they held is gone (evicted)."""
        self.index.discard_blocks(blocks)

    def on_committed(self, req: Request) -> None:
        """`req`'s copy in flight is committed (``swap_host_blocks``, after the store's dedup):
        the index learns its content-addressed blocks."""
        n = len(req.swap_host_blocks)
        hashes = self.order_hashes(req, len(req.host_blocks), n, req.swap_tokens)
        if hashes:
            self.index.add(hashes, req.swap_host_blocks)

    def adopt_swap_copy(self, req: Request) -> None:
        """The copy is committed: its blocks become (the tail of) the host copy."""
        first = len(req.host_blocks)
        n = len(req.swap_host_blocks)
        req.host_blocks.extend(req.swap_host_blocks)
        req.host_hashes.extend(self.order_hashes(req, first, n, req.swap_tokens) or [None] * n)
        req.host_tokens = req.swap_tokens
        self.clear_swap(req)

    def held_after(self, req: Request, first: int, num_blocks: int) -> list[int]:
        """Host blocks the index says already hold `req`'s full blocks [first, num_blocks),
        as far as it holds them without a gap: a copy out may skip them."""
        if not self.retain or num_blocks <= first:
            return []
        return self.index.match(self.hashes(req, num_blocks)[first:])

    def adopt_held(self, req: Request, num_blocks: int) -> int:
        """Extends `req`'s host copy with the blocks the host already holds (``held_after``);
        returns the host copy's length in blocks. Like any retained block they may be evicted
        before they are read: the pin of the swap-in checks them."""
        first = len(req.host_blocks)
        held = self.held_after(req, first, num_blocks)
        if held:
            req.host_blocks.extend(held)
            req.host_hashes.extend(self.hashes(req, first + len(held))[first:])
            req.host_tokens = len(req.host_blocks) * self._bs()
        return len(req.host_blocks)

    def drop_host_blocks(self, req: Request, keep: int) -> None:
        """Keeps the first `keep` host blocks; frees the private ones after them."""
        self.free_private(req.seq, req.host_blocks[keep:], req.host_hashes[keep:])
        del req.host_blocks[keep:]
        del req.host_hashes[keep:]
        req.host_tokens = min(req.host_tokens, keep * (self._block_size() or 0))

    def release(self, req: Request) -> None:
        """Forgets the host copy: private blocks are freed, retained ones stay as cache."""
        self.drop_host_blocks(req, 0)
        req.host_tokens = 0

    def free_private(
        self, seq: int, blocks: list[int], hashes: list[bytes | None] | tuple[bytes | None, ...]
    ) -> None:
        private = tuple(b for i, b in enumerate(blocks) if i >= len(hashes) or not hashes[i])
        if private:
            self._ops.append(HostOp(HostOpKind.FREE, seq, blocks=private))

    def store_lost(self) -> None:
        """The store is gone and everything it held: the index forgets it all."""
        self.index.clear()

    def forget_lost(self, req: Request) -> None:
        """The store is gone: forgets `req`'s host copy without asking the store for anything,
        and marks a copy in flight as stale (see ``take_stale``)."""
        req.host_blocks = []
        req.host_hashes = []
        req.host_tokens = 0
        if req.swap_sent:
            self._stale_swaps.add(req.seq)

    def take_stale(self, seq: int) -> bool:
        """True (once) when `seq`'s copy was in flight as the store was lost: whatever it
        committed is gone with that store."""
        if seq in self._stale_swaps:
            self._stale_swaps.discard(seq)
            return True
        return False

    @staticmethod
    def clear_swap(req: Request) -> None:
        req.swap_host_blocks = []
        req.swap_lease = None
        req.swap_sent = False

    # ------------------------------------------------------ retained prefixes

    def look_up_prefix(self, req: Request) -> None:
        """Matches a new prompt's retained prefix (all full blocks but the one to sample) in
        the index: a hit resumes it from the host at that length, unless fetching it would
        cost more than computing it (then it is a declined hit). No round trip: the pin before
        its swap-in checks the blocks are still there."""
        n = (len(req.prompt_ids) - 1) // self._bs()
        if not self.retain or n <= 0:
            return
        root = self.hashes(req, 1)[0]
        if root in self._offloads_by_root:
            # The previous turn of this conversation is still being offloaded: a match now
            # would miss what a few milliseconds will retain. Match once it is committed.
            req.deferred = True
            self._deferred.setdefault(root, []).append(req)
            return
        req.deferred = False
        self._counters.retained_lookups += 1
        host_blocks = self.index.match(self.hashes(req, n))
        if host_blocks and self._fetch_pays(host_blocks):
            self._resume_from_host(req, host_blocks)
        elif host_blocks:
            self._counters.host_hits_declined += 1
            self._counters.host_declined_tokens += len(host_blocks) * self._bs()

    def fetch_pays(self, host_blocks: list[int]) -> bool:
        """Whether fetching `host_blocks` beats prefilling their tokens (``fetch_cost``)."""
        return self._fetch_pays(host_blocks)

    def decline_hit(self, req: Request, device_blocks: int) -> None:
        """A new prompt's host hit is given up at admission, its worker's device holding its
        first `device_blocks` blocks and the rest not worth a fetch: it waits again as a fresh
        prompt (to share the device's blocks and prefill the rest), counted as a declined hit
        as if the lookup had declined it."""
        n = len(req.host_blocks)
        self._counters.reuse_hit_tokens -= req.num_computed
        self._counters.retained_hit_blocks -= n
        self._counters.host_hits_declined += 1
        self._counters.host_declined_tokens += (n - device_blocks) * self._bs()
        self.release(req)
        req.num_computed = req.prompt_charged = req.cached_prompt_tokens = 0
        req.status = Status.WAITING

    def _resume_from_host(self, req: Request, host_blocks: list[int]) -> None:
        """A new prompt's retained prefix: it resumes from the host at that length."""
        n = len(host_blocks)
        req.host_blocks = list(host_blocks)
        req.host_hashes = list(self.hashes(req, n))
        req.host_tokens = req.num_computed = n * self._bs()
        req.prompt_charged = req.num_computed  # fairness charges computed work, not cache hits
        req.cached_prompt_tokens = req.num_computed
        req.status = Status.SWAPPED
        self._counters.reuse_hit_tokens += req.num_computed
        self._counters.retained_hit_blocks += n

    def on_pin_failed(self, req: Request) -> None:
        """A pin of `req`'s host copy failed: the store dropped some of it (which, it does not
        say), so the index forgets all of it; the next offload of that content adds it back."""
        self.index.discard_hashes(req.host_hashes)

    def begin_offload(self, req: Request) -> None:
        """An offload of `req`'s KV starts: lookups of its prefix wait for it."""
        req.offloading = True
        root = self.hashes(req, 1)[0]
        self._offloads_by_root[root] = self._offloads_by_root.get(root, 0) + 1

    def end_offload(self, req: Request) -> None:
        """An offload is over (committed, refused, or its worker gone): prompts deferred behind
        it are matched now."""
        if not req.offloading:
            return
        req.offloading = False
        root = req.hashes[0]
        left = self._offloads_by_root[root] - 1
        if left:
            self._offloads_by_root[root] = left
            return
        del self._offloads_by_root[root]
        for waiting in self._deferred.pop(root, []):
            if waiting.deferred and waiting.status == Status.WAITING:
                self.look_up_prefix(waiting)

    def sizes(self) -> dict[str, int]:
        """Entries of each table (the memory debug aid logs them, servekit/memtrace.py)."""
        return {
            "salts": len(self._salts),
            "host_ops": len(self._ops),
            "offloads": len(self._offloads_by_root),
            "deferred": sum(len(reqs) for reqs in self._deferred.values()),
            "stale_swaps": len(self._stale_swaps),
            "host_index": len(self.index),
        }

    def check_integrity(self, requests: list[Request]) -> None:
        """Checks the host-copy fields of `requests` and the offload counts."""
        offloading: dict[bytes, int] = {}
        for req in requests:
            assert len(req.host_hashes) == len(req.host_blocks), f"host hashes of {req.seq}"
            assert req.host_tokens <= req.num_tokens, f"host copy of {req.seq} too long"
            if req.offloading:
                offloading[req.hashes[0]] = offloading.get(req.hashes[0], 0) + 1
        assert offloading == self._offloads_by_root, "offloads in flight miscounted"
        self.index.check_integrity()
