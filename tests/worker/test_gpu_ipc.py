"""The CUDA worker's pool handle: what it registers with the KV store maps the same device memory
in another process (CUDA IPC), both ways."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import torch

from worker_svc.loader import load_model
from worker_svc.server import DevicePool, build_parser, config_from_args

# The other process: rebuild the pool from the handle on stdin, report a block the parent
# wrote, write another one.
CHILD = """
import pickle, sys, torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor
pool = rebuild_cuda_tensor(*pickle.loads(sys.stdin.buffer.read()))
print(repr(float(pool[1].double().sum())), tuple(pool.shape))
pool[2].fill_(7)
torch.cuda.synchronize()
"""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pool_handle_maps_the_same_memory_in_another_process() -> None:
    args = build_parser().parse_args(
        [
            *("--scheduler", "unused:1"),
            *("--device", "cuda"),
            *("--device-kv-blocks", "8"),
            *("--worker-id", "ipc-test"),
            *("--deployment-id", f"test-{uuid.uuid4().hex[:8]}"),
        ]
    )
    spec, model = load_model("tiny", device="cuda")
    pool = DevicePool(config_from_args(args), spec, model)
    try:
        assert pool.kind == "cuda_ipc"
        tensor = pool.pool.tensor
        g = torch.Generator(device="cuda").manual_seed(3)
        tensor[1].copy_(torch.rand(tensor[1].shape, generator=g, device="cuda"))
        torch.cuda.synchronize()
        child = subprocess.run(
            [sys.executable, "-c", CHILD],
            input=pool.handle,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert child.returncode == 0, child.stderr.decode()
        total, shape = child.stdout.decode().split(" ", 1)
        assert float(total) == float(tensor[1].double().sum())
        assert shape.strip() == str(tuple(tensor.shape))
        assert bool((tensor[2] == 7).all()), "the other process's write is not in the pool"
        assert bool((tensor[0] == 0).all()) and bool((tensor[3:] == 0).all())
    finally:
        pool.close()
