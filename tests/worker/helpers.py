"""Small factories shared by the worker tests."""

from __future__ import annotations

from servekit.modelspec import ModelSpec
from worker_svc.kv_pool import KVPool
from worker_svc.model import LlamaModel


def prompt_of(length: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of byte tokens."""
    return [(i * 37 + salt * 101 + 11) % 256 for i in range(length)]


def new_pool(spec: ModelSpec, model: LlamaModel, num_blocks: int, block_size: int) -> KVPool:
    """A zeroed pool shaped for ``model``."""
    return KVPool(
        num_blocks=num_blocks,
        num_layers=spec.num_layers,
        block_size=block_size,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        dtype=model.dtype,
        device=model.device,
    )
