"""GPU telemetry for worker stats through pynvml (nvidia-ml-py).

Without a GPU (or without the NVIDIA driver) it reports "not available: <why>" — never a crash.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

log = logging.getLogger(__name__)


class GpuTelemetry(NamedTuple):
    name: str
    utilization: float  # 0..1
    memory_used: int
    memory_total: int
    pcie_tx_kbs: int
    pcie_rx_kbs: int


class Telemetry:
    """Opens NVML once for one device; ``read()`` is cheap (a few NVML queries)."""

    def __init__(self, device: str) -> None:
        self.unavailable: str | None = None
        self._handle = None
        self._nvml = None
        if not device.startswith("cuda"):
            self.unavailable = "not available: the worker runs on the CPU"
            return
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        try:
            import pynvml
        except ImportError as err:
            self.unavailable = f"not available: {err}"
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except pynvml.NVMLError as err:
            self.unavailable = f"not available: {err}"
            log.warning("no GPU telemetry", extra={"why": str(err)})

    def read(self) -> GpuTelemetry | None:
        if self._nvml is None:
            return None
        nv, h = self._nvml, self._handle
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        util = nv.nvmlDeviceGetUtilizationRates(h)
        return GpuTelemetry(
            name=str(nv.nvmlDeviceGetName(h)),
            utilization=util.gpu / 100.0,
            memory_used=int(mem.used),
            memory_total=int(mem.total),
            pcie_tx_kbs=int(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES)),
            pcie_rx_kbs=int(nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES)),
        )

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None
