"""The worker's one frozen config: its flags (each with a ``FASTSWITCH_<FLAG>`` environment
fallback), validated once, built in ``main()`` by ``config_from_args``."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from servekit import shm
from servekit.config import add_common_flags, env_default
from servekit.names import MODES, SWAP_LAYOUTS, SwapLayout, mode_settings
from servekit.planes import (
    OPEN_PLANE,
    InternalPlane,
    add_internal_flags,
    default_internal_address,
    plane_from_args,
)

DTYPES = ("float32", "float16", "bfloat16")  # --dtype, beside "auto" (the loader's default)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything one worker process is started with. ``scheduler`` is the scheduler's worker
    plane (its ``--internal-listen``), never its public API; ``kvstore`` None: no KV store (and
    no swaps); ``device_kv_blocks`` None: sized by the device pool; ``threads`` None: torch's
    default; ``advertise``: the address the scheduler hands out (``--listen`` if not given).
    ``listen`` is internal too: a TCP one needs the deployment secret or mutual TLS in
    ``plane``, which also guards the worker's calls to the scheduler and the store."""

    listen: str
    metrics_port: int
    metrics_host: str
    log_level: str
    deployment_id: str
    scheduler: str
    kvstore: str | None
    model: str
    device: str
    dtype: str
    device_kv_blocks: int | None
    device_kv_fraction: float
    block_size: int
    worker_id: str
    advertise: str
    threads: int | None
    swap_layout: str = SwapLayout.GROUP
    swap_sync: bool = False
    plane: InternalPlane = OPEN_PLANE

    def __post_init__(self) -> None:
        if not self.scheduler:
            raise ValueError("--scheduler is required (the scheduler's --internal-listen)")
        self.plane.check_listener(self.listen, "--listen")
        if self.device_kv_blocks is not None and self.device_kv_blocks <= 0:
            raise ValueError(f"--device-kv-blocks must be > 0, got {self.device_kv_blocks}")
        if not 0 < self.device_kv_fraction <= 1:
            raise ValueError(
                f"--device-kv-fraction must be in (0, 1], got {self.device_kv_fraction}"
            )
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"--block-size must be a power of two, got {self.block_size}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.swap_layout not in SWAP_LAYOUTS:
            raise ValueError(
                f"--swap-layout must be one of {list(SWAP_LAYOUTS)}, got {self.swap_layout!r}"
            )
        shm.check_name(f"{shm.PREFIX}{self.deployment_id}-pool-{self.worker_id}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastswitch serve worker",
        description="One worker per accelerator: runs the model over its device KV pool.",
    )
    add_common_flags(p, listen="", metrics_port=9471)
    p.add_argument(
        "--scheduler",
        default=env_default("--scheduler", ""),
        help="the scheduler's worker plane, its --internal-listen (not its public --listen); "
        "default unix:///tmp/fastswitch-<deployment-id>-scheduler.sock",
    )
    p.add_argument("--kvstore", default=env_default("--kvstore", ""), help="KV store address")
    p.add_argument("--model", default=env_default("--model", "tiny"), help="tiny or a HF dir")
    p.add_argument(
        "--device",
        default=env_default("--device", "auto"),
        help="auto, cpu, cuda, cuda:N, or cuda:auto (the first GPU no other worker of the "
        "deployment holds: replicas of one service, one GPU each)",
    )
    p.add_argument("--dtype", default=env_default("--dtype", "auto"))
    p.add_argument(
        "--device-kv-blocks",
        type=int,
        default=env_default("--device-kv-blocks", None),
        help="KV pool size in blocks (default: CPU 1024; CUDA from --device-kv-fraction)",
    )
    p.add_argument(
        "--device-kv-fraction",
        type=float,
        default=env_default("--device-kv-fraction", 0.8),
        help="share of free GPU memory for the KV pool after the model is loaded",
    )
    p.add_argument("--block-size", type=int, default=env_default("--block-size", 16))
    p.add_argument(
        "--worker-id", default=env_default("--worker-id", f"{socket.gethostname()}-{os.getpid()}")
    )
    p.add_argument(
        "--advertise",
        default=env_default("--advertise", ""),
        help="address others use to reach this worker (default: --listen)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=env_default("--threads", 0),
        help="torch CPU threads (0: torch's default)",
    )
    p.add_argument(
        "--mode",
        default=env_default("--mode", "fastswitch"),
        choices=MODES,
        help="fastswitch: block-group swaps, async; vllm-baseline and vllm-v1: per-layer copies "
        "inside the step (the defaults of --swap-layout and --swap-sync; vllm-v1's scheduler "
        "recomputes unless told to swap) (default %(default)s)",
    )
    p.add_argument(
        "--swap-layout",
        default=env_default("--swap-layout", ""),
        help="group: one copy per block run (FastSwitch); per-layer: one copy per block, layer "
        "and K/V (the vLLM-style baseline); default from --mode",
    )
    p.add_argument(
        "--swap-sync",
        action="store_true",
        default=env_default("--swap-sync", False),
        help="copy swaps inside the step, before the forward (the baseline); default: async, "
        "on a thread and stream of their own",
    )
    add_internal_flags(p)
    return p


def _flag(name: str, value: object) -> bool:
    """A boolean flag: True/False from argparse, or the string of its environment fallback."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {value!r}")


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    mode = mode_settings(args.mode)
    listen = args.listen or default_internal_address(args.deployment_id, f"worker-{args.worker_id}")
    return WorkerConfig(
        listen=listen,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_level=args.log_level,
        deployment_id=args.deployment_id,
        scheduler=args.scheduler or default_internal_address(args.deployment_id, "scheduler"),
        kvstore=args.kvstore or None,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        device_kv_blocks=None if args.device_kv_blocks is None else int(args.device_kv_blocks),
        device_kv_fraction=args.device_kv_fraction,
        block_size=args.block_size,
        worker_id=args.worker_id,
        advertise=args.advertise or listen,
        threads=args.threads if args.threads > 0 else None,
        swap_layout=args.swap_layout or mode.swap_layout.value,
        swap_sync=_flag("--swap-sync", args.swap_sync) or mode.swap_sync,
        plane=plane_from_args(args),
    )
