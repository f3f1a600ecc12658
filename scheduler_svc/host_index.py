"""What the host arena holds, as the scheduler knows it without asking: content hash -> host block.

There is one scheduler per KV store and it orders every write into the arena, so the commits it
ordered tell it what the arena holds: a new prompt's retained prefix is matched here, at submit,
with no round trip, and a swap-out skips the blocks whose content is already there. The store may
still drop a block on its own (its LRU under reserve pressure, a ttl, a tenant's quota), so the
index can be stale in one direction only, and that is safe: every host block the scheduler
reads is pinned first with its expected hash (``PinRequest.block_hashes``), and a pin that finds
a block gone fails, falls back to recompute (rule 7) and drops those hashes here.

    commit (swap-out, offload)  ──▶ add(hashes, the blocks that now hold them)
    reserve answered            ──▶ discard_blocks: a block given out as free holds nothing now
    pin failed, conversation freed ──▶ discard_hashes
    store lost                  ──▶ clear
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class HostIndex:
    """Owns the map from content hash to the host block holding it, and its inverse.

    Invariant: the two maps are inverse to each other, so the index never names more blocks
    than the arena has (one entry per block id) and a block id names one content at most."""

    def __init__(self) -> None:
        self._block_of: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._block_of)

    def add(self, hashes: Sequence[bytes | None], blocks: Sequence[int]) -> None:
        """Committed: `blocks[i]` holds the content `hashes[i]` (None: a private block)."""
        for h, b in zip(hashes, blocks, strict=True):
            if h is None:
                continue
            self.discard_blocks((b,))
            self.discard_hashes((h,))
            self._block_of[h] = b
            self._hash_of[b] = h

    def match(self, hashes: Iterable[bytes]) -> list[int]:
        """The host blocks of the longest prefix of the chain `hashes` the index holds."""
        found: list[int] = []
        for h in hashes:
            b = self._block_of.get(h)
            if b is None:
                break
            found.append(b)
        return found

    def discard_hashes(self, hashes: Iterable[bytes | None]) -> None:
        for h in hashes:
            if h is not None and (b := self._block_of.pop(h, None)) is not None:
                del self._hash_of[b]

    def discard_blocks(self, blocks: Iterable[int]) -> None:
        for b in blocks:
            h = self._hash_of.pop(b, None)
            if h is not None:
                del self._block_of[h]

    def clear(self) -> None:
        self._block_of.clear()
        self._hash_of.clear()

    def check_integrity(self) -> None:
        assert len(self._block_of) == len(self._hash_of), "host index maps differ in size"
        for h, b in self._block_of.items():
            assert self._hash_of.get(b) == h, f"host index: block {b} not inverse"
