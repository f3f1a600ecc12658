"""The worker's device: which torch device it runs on, and the device KV pool in memory that
another process (the KV store, for CUDA IPC or a shared-memory name) can map."""

from __future__ import annotations

import logging
import pickle

import torch
from torch.multiprocessing.reductions import reduce_tensor

from servekit import shm
from servekit.modelspec import ModelSpec
from worker_svc.kv_pool import KVPool
from worker_svc.model import LlamaModel

log = logging.getLogger(__name__)

CPU_DEFAULT_BLOCKS = 1024  # --device-kv-blocks on the CPU when not given

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``;
    ``ValueError`` for CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype of a ``--dtype`` name; None for ``auto`` (the loader's default)."""
    return _DTYPES.get(name)


class DevicePool:
    """The device KV pool and how another process maps it.

    Owns the pool's memory for the worker's whole life: ``server.serve`` builds it once, right
    after the model is loaded, hands ``pool`` to the engine and the swap engine, registers
    ``kind`` and ``handle`` with the KV store, and calls ``close`` last of all (after the swap
    engine is closed, so no copy reads a freed pool).

    CPU: a shared-memory file ``fastswitch-<deployment>-pool-<worker>`` (removed on close).
    CUDA: device memory exported as a CUDA IPC handle (pickled rebuild arguments).

    ``num_blocks`` of None sizes the pool itself: 1024 blocks on the CPU, on CUDA
    ``kv_fraction`` of the memory left free after the model was loaded.
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: LlamaModel,
        *,
        block_size: int,
        num_blocks: int | None,
        kv_fraction: float,
        deployment_id: str,
        worker_id: str,
    ) -> None:
        device, dtype = model.device, model.dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        block_bytes = spec.block_bytes(block_size, itemsize)
        if num_blocks is None:
            num_blocks = _default_blocks(device, block_bytes, kv_fraction)
        shape = (num_blocks, spec.num_layers, 2, block_size, spec.num_kv_heads, spec.head_dim)
        self._buf: shm.SharedBuffer | None = None
        if device.type == "cpu":
            name = f"{shm.PREFIX}{deployment_id}-pool-{worker_id}"
            if shm.remove_stale(name):
                log.warning("removed a stale pool file", extra={"shm": name})
            self._buf = shm.create(name, num_blocks * block_bytes, prefault=True)
            tensor = self._buf.as_tensor(dtype, shape)
            self.kind, self.handle = "shm", name.encode()
        else:
            tensor = torch.zeros(shape, dtype=dtype, device=device)
            self.kind, self.handle = "cuda_ipc", _cuda_ipc_handle(tensor)
        self.pool = KVPool(
            num_blocks=num_blocks,
            num_layers=spec.num_layers,
            block_size=block_size,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            dtype=dtype,
            device=device,
            tensor=tensor,
        )

    def close(self) -> None:
        """Removes the shared-memory file (CPU) first, so nothing outlives the process; the
        mapping itself goes when the last tensor over it does (at the latest, at exit)."""
        if self._buf is not None:
            self._buf.unlink()
            try:
                self._buf.close()
            except BufferError:
                log.debug("pool tensors still alive; unmapped at exit")
            self._buf = None


def _default_blocks(device: torch.device, block_bytes: int, kv_fraction: float) -> int:
    if device.type == "cpu":
        return CPU_DEFAULT_BLOCKS
    free, _total = torch.cuda.mem_get_info(device)
    return max(1, int(free * kv_fraction) // block_bytes)


def _cuda_ipc_handle(tensor: torch.Tensor) -> bytes:
    _rebuild, args = reduce_tensor(tensor)
    return pickle.dumps(args)
