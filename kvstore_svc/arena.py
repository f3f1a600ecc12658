"""The host arena: one pre-faulted shared-memory file per node, cut into host blocks.

The store owns the format; a worker maps the arena with this module (the one import a worker
makes from ``kvstore_svc``, docs/architecture.md). Layout::

    /dev/shm/fastswitch-<deployment>-arena        mode 0600, pre-faulted at store start
    offset 0                                                                    arena_bytes
    ├─────────────┬─────────────┬─────────────┬── ... ──┬─────────────┬──────────────┤
    │   block 0   │   block 1   │   block 2   │         │  block N-1  │ unused tail  │
    └─────────────┴─────────────┴─────────────┴── ... ──┴─────────────┴──────────────┘
     block_bytes each; N = arena_bytes // block_bytes; the tail (< block_bytes) is never used

    one host block = one device block's bytes, verbatim (same per-block layout as the pool):
        [num_layers, 2 (K, V), block_size, num_kv_heads, head_dim] of the model's dtype
    an extent Extent(start, count) = bytes [start * block_bytes, (start + count) * block_bytes):
        one contiguous copy, whatever the layer count

``block_bytes`` is not known when the store starts: the first worker to register fixes it
(``ArenaLayout.fit(arena_bytes, block_bytes)``) and every later worker must match it.

A worker, after ``RegisterWorker``::

    layout = ArenaLayout(resp.block_bytes, resp.num_host_blocks)
    host = map_arena(resp.arena_name, layout)     # torch.uint8 [num_blocks, block_bytes]
    host[start : start + count].copy_(device_pool_bytes[dst : dst + count])
"""

from __future__ import annotations

import logging
import mmap
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servekit import shm

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DEPLOYMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_deployment_id(deployment_id: str) -> None:
    """``ValueError`` unless the id is 1-128 chars of ``[A-Za-z0-9._-]`` (it names files)."""
    if not _DEPLOYMENT_ID.fullmatch(deployment_id):
        raise ValueError(
            f"deployment id {deployment_id!r} must be 1-128 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )


def arena_name(deployment_id: str) -> str:
    """The arena's shared-memory file name: ``fastswitch-<deployment>-arena``."""
    check_deployment_id(deployment_id)
    return f"{shm.PREFIX}{deployment_id}-arena"


def arena_bytes_for_gib(gib: float) -> int:
    """``gib`` GiB rounded up to whole pages."""
    if not gib > 0:
        raise ValueError(f"arena size must be > 0 GiB, got {gib}")
    raw = int(gib * (1 << 30))
    return -(-max(raw, 1) // mmap.PAGESIZE) * mmap.PAGESIZE


@dataclass(frozen=True, slots=True)
class ArenaLayout:
    """``num_blocks`` host blocks of ``block_bytes`` each, from offset 0 of the arena."""

    block_bytes: int
    num_blocks: int

    def __post_init__(self) -> None:
        if self.block_bytes <= 0:
            raise ValueError(f"block_bytes must be > 0, got {self.block_bytes}")
        if self.num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {self.num_blocks}")

    @classmethod
    def fit(cls, arena_bytes: int, block_bytes: int) -> ArenaLayout:
        """As many whole blocks as fit in ``arena_bytes``."""
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be > 0, got {block_bytes}")
        return cls(block_bytes, arena_bytes // block_bytes)

    @property
    def used_bytes(self) -> int:
        """Bytes covered by blocks (``<=`` the arena's size)."""
        return self.block_bytes * self.num_blocks

    def extent_bytes(self, start: int, count: int) -> tuple[int, int]:
        """``(offset, nbytes)`` of the extent ``[start, start + count)`` in the arena."""
        if count < 0 or start < 0 or start + count > self.num_blocks:
            raise ValueError(f"extent ({start}, {count}) outside [0, {self.num_blocks})")
        return start * self.block_bytes, count * self.block_bytes

    def blocks_view(self, buf: shm.SharedBuffer) -> torch.Tensor:
        """``torch.uint8 [num_blocks, block_bytes]`` over ``buf``; zero-copy, writable.

        The view keeps ``buf`` open: drop it (and its slices) before ``buf.close()``.
        """
        import torch  # on first use: the store process itself never loads torch

        if buf.size < self.used_bytes:
            raise ValueError(
                f"arena {buf.name} has {buf.size} bytes; layout needs {self.used_bytes}"
            )
        return buf.as_tensor(torch.uint8, (self.num_blocks, self.block_bytes))


def map_arena(name: str, layout: ArenaLayout) -> torch.Tensor:
    """Maps the arena ``name`` (pre-faulted in this process) as ``layout.blocks_view``.

    The returned tensor alone holds the mapping: it is unmapped when the tensor and every view
    of it are gone. For explicit control, use ``shm.open_existing`` + ``layout.blocks_view``.
    """
    return layout.blocks_view(shm.open_existing(name))


class HostArena:
    """The store's side: creates (pre-faulted) and finally removes the arena file."""

    def __init__(self, buf: shm.SharedBuffer) -> None:
        self._buf = buf
        self._removed = False

    @classmethod
    def create(cls, deployment_id: str, size_bytes: int) -> HostArena:
        """Creates ``fastswitch-<deployment>-arena``; a stale file of that name is removed first.

        Blocking (allocates and maps every page): call it off the event loop.
        """
        name = arena_name(deployment_id)
        if shm.remove_stale(name):
            log.warning("removed stale arena left by an earlier run", extra={"arena": name})
        started = time.perf_counter()
        buf = shm.create(name, size_bytes, prefault=True)
        log.info(
            "arena created",
            extra={
                "arena": name,
                "bytes": size_bytes,
                "prefault_s": round(time.perf_counter() - started, 4),
            },
        )
        return cls(buf)

    @property
    def name(self) -> str:
        return self._buf.name

    @property
    def size(self) -> int:
        return self._buf.size

    def close(self) -> None:
        """Unmaps and unlinks (idempotent). Workers' mappings stay valid until they unmap."""
        if self._removed:
            return
        try:
            self._buf.close()
        finally:
            self._buf.unlink()
            self._removed = True
        log.info("arena removed", extra={"arena": self.name})
