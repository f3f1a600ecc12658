"""Argument checks of the store's calls (each raises ``InvalidArgument`` having changed nothing),
and the block-run helper its lease ending uses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from kvstore_svc.errors import InvalidArgument
from servekit.runs import BlockRun

MAX_HASH_BYTES = 128


def check_blocks(blocks: Sequence[int], num_blocks: int) -> None:
    """Every block id in ``[0, num_blocks)``, none twice."""
    for b in blocks:
        if not 0 <= b < num_blocks:
            raise InvalidArgument(f"block {b} outside [0, {num_blocks})")
    if len(set(blocks)) != len(blocks):
        raise InvalidArgument("duplicate block ids")


def check_commit(
    blocks: Sequence[int], block_hashes: Sequence[bytes], ttl_s: float, num_blocks: int
) -> list[bytes]:
    """A commit's blocks, hashes (parallel, or empty: all private) and ttl; returns the hashes
    parallel to ``blocks`` (``b""`` for private)."""
    hashes = list(block_hashes) or [b""] * len(blocks)
    if len(hashes) != len(blocks):
        raise InvalidArgument(f"{len(blocks)} blocks but {len(block_hashes)} hashes")
    check_blocks(blocks, num_blocks)
    for h in hashes:
        if len(h) > MAX_HASH_BYTES:
            raise InvalidArgument(f"block hash of {len(h)} bytes > {MAX_HASH_BYTES}")
    if not (math.isfinite(ttl_s) and ttl_s >= 0):
        raise InvalidArgument(f"ttl_s {ttl_s} must be finite and >= 0")
    return hashes


def lease_duration(lease_s: float, default_s: float, max_s: float) -> float:
    """``lease_s``, or ``default_s`` for 0; must be in ``(0, max_s]``."""
    if lease_s == 0:
        return default_s
    if not math.isfinite(lease_s) or not 0 < lease_s <= max_s:
        raise InvalidArgument(f"lease_s {lease_s} not in (0, {max_s}]")
    return lease_s


def block_runs(blocks: Iterable[int]) -> list[BlockRun]:
    """Blocks as maximal sorted runs: ``{4, 1, 2, 3, 7} -> [BlockRun(1, 4), BlockRun(7, 1)]``."""
    runs: list[BlockRun] = []
    for b in sorted(blocks):
        if runs and runs[-1].stop == b:
            runs[-1] = BlockRun(runs[-1].start, runs[-1].count + 1)
        else:
            runs.append(BlockRun(b, 1))
    return runs
