"""Which device each worker runs on."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def cuda_device_count() -> int:
    """CUDA devices visible here (0 without CUDA); imports torch, so only called at a start."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_devices(
    devices: Sequence[str], workers: int, cuda_count: Callable[[], int] = cuda_device_count
) -> tuple[str, ...]:
    """One device per worker, or () to leave each worker its own choice.

    ``devices`` empty: worker i on ``cuda:i`` when CUDA is present (``cuda:(i mod count)`` when
    there are more workers than devices: they share), else (). One entry: every worker's.
    N entries: worker i on the i-th. ValueError for a malformed name or a wrong count.
    """
    bad = [d for d in devices if not _DEVICE.fullmatch(d)]
    if bad:
        raise ValueError(f"devices must be cpu, cuda, cuda:N or auto; got {', '.join(bad)}")
    if devices:
        if len(devices) == 1:
            return tuple(devices) * workers
        if len(devices) != workers:
            raise ValueError(
                f"{len(devices)} devices for {workers} workers: give one for all or one per worker"
            )
        return tuple(devices)
    count = cuda_count()
    if count == 0:
        return ()
    return tuple(f"cuda:{i % count}" for i in range(workers))
