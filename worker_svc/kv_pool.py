"""The device KV pool: every KV block of one worker in one tensor, block-major.

Layout ``[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]``: a block holds
``block_size`` tokens of K and V for *all* layers and is one contiguous region, so a run of
adjacent blocks (a block group) is moved by one copy whatever the layer count::

    pool ── block 0 ──────────────────────────────┬── block 1 ─────────── ...
           │ layer 0       │ layer 1      │ ...   │ layer 0      │ ...
           │ K[bs,kvh,hd]  │ K            │       │ K            │
           │ V[bs,kvh,hd]  │ V            │       │ V            │
           └─ block_bytes = L * 2 * bs * kvh * hd * dtype_bytes ─┘

The host arena uses the same bytes per block, so a swap is a byte copy of runs. The pool
owns no allocation policy: the scheduler decides which blocks a request holds.
"""

from __future__ import annotations

import torch

__all__ = ["KVPool"]


class KVPool:
    """A ``[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]`` tensor.

    ``tensor`` may be given (e.g. one backed by shared memory); it must have exactly that
    shape, ``dtype`` and ``device`` and be contiguous. Otherwise a zeroed tensor is made.
    """

    def __init__(
        self,
        *,
        num_blocks: int,
        num_layers: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        tensor: torch.Tensor | None = None,
    ) -> None:
        for name, value in (
            ("num_blocks", num_blocks),
            ("num_layers", num_layers),
            ("block_size", block_size),
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        shape = (num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim)
        device = torch.device(device)
        if tensor is None:
            tensor = torch.zeros(shape, dtype=dtype, device=device)
        else:
            if tuple(tensor.shape) != shape:
                raise ValueError(f"pool tensor has shape {tuple(tensor.shape)}, expected {shape}")
            if tensor.dtype != dtype or tensor.device.type != device.type:
                raise ValueError(
                    f"pool tensor is {tensor.dtype} on {tensor.device}, expected {dtype} on "
                    f"{device}"
                )
            if not tensor.is_contiguous():
                raise ValueError("pool tensor must be contiguous")
        self.tensor = tensor
        self.block_size = block_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        # Per-layer K and V views [num_blocks, block_size, kvh, hd]; they share the storage.
        self._k = [tensor[:, layer, 0] for layer in range(num_layers)]
        self._v = [tensor[:, layer, 1] for layer in range(num_layers)]

    @property
    def num_blocks(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def block_bytes(self) -> int:
        """Bytes of one block (all layers, K and V)."""
        return self.tensor[0].numel() * self.tensor.element_size()

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(K, V)`` of one layer, each ``[num_blocks, block_size, kvh, hd]``."""
        return self._k[layer], self._v[layer]

    def block_range(self, start: int, count: int) -> torch.Tensor:
        """The contiguous region of blocks ``[start, start + count)`` (a view)."""
        if start < 0 or count <= 0 or start + count > self.num_blocks:
            raise ValueError(f"blocks [{start}, {start + count}) outside [0, {self.num_blocks})")
        return self.tensor[start : start + count]
