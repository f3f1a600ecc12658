"""Registered workers, and the arena layout and model fingerprint that the first one fixes.

The block size is unknown until the first registration; it fixes ``block_bytes`` and the model
fingerprint for the store's life, and every later worker must match them. The store logs and
sizes its allocator; this part only checks and keeps.
"""

from __future__ import annotations

from kvstore_svc.arena import ArenaLayout
from kvstore_svc.errors import InvalidArgument, NotFound, Precondition
from kvstore_svc.records import WorkerInfo


class WorkerRegistry:
    """Workers by id, plus the layout fixed by the first of them (``None`` before)."""

    def __init__(self, arena_bytes: int) -> None:
        self._arena_bytes = arena_bytes
        self._layout: ArenaLayout | None = None
        self._fingerprint = ""
        self._workers: dict[str, WorkerInfo] = {}

    def __len__(self) -> int:
        return len(self._workers)

    @property
    def layout(self) -> ArenaLayout | None:
        return self._layout

    @property
    def workers(self) -> dict[str, WorkerInfo]:
        return dict(self._workers)

    def admit(self, info: WorkerInfo) -> ArenaLayout:
        """The layout ``info`` registers under: the fixed one, or (first registration) the one
        it would fix. Changes nothing. ``Precondition`` when ``block_bytes`` or the fingerprint
        differ from the first registration's, or when the arena cannot hold one block."""
        if not info.worker_id:
            raise InvalidArgument("worker_id is empty")
        if not info.model_fingerprint:
            raise InvalidArgument("model_fingerprint is empty")
        if info.block_bytes <= 0:
            raise InvalidArgument(f"block_bytes must be > 0, got {info.block_bytes}")
        if info.pool_blocks < 0:
            raise InvalidArgument(f"pool_blocks must be >= 0, got {info.pool_blocks}")
        if self._layout is None:
            layout = ArenaLayout.fit(self._arena_bytes, info.block_bytes)
            if layout.num_blocks == 0:
                raise Precondition(
                    f"arena of {self._arena_bytes} bytes holds no block of {info.block_bytes} bytes"
                )
            return layout
        if info.block_bytes != self._layout.block_bytes:
            raise Precondition(
                f"block_bytes {info.block_bytes} differs from the store's "
                f"{self._layout.block_bytes} (fixed by the first worker)"
            )
        if info.model_fingerprint != self._fingerprint:
            raise Precondition(
                f"model fingerprint {info.model_fingerprint!r} differs from the store's "
                f"{self._fingerprint!r}"
            )
        return self._layout

    def add(self, info: WorkerInfo, layout: ArenaLayout) -> bool:
        """Keeps an admitted worker under ``layout`` (the first fixes it and the fingerprint).
        True when it replaces an earlier registration of the same id."""
        if self._layout is None:
            self._layout, self._fingerprint = layout, info.model_fingerprint
        again = info.worker_id in self._workers
        self._workers[info.worker_id] = info
        return again

    def remove(self, worker_id: str) -> None:
        """Forgets a worker. ``NotFound`` if unknown."""
        if self._workers.pop(worker_id, None) is None:
            raise NotFound(f"no worker {worker_id!r}")
