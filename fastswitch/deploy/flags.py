"""The one place that maps a deployment (its config and its layout) to the services' flags."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastswitch.deploy.config import DeploymentConfig

SERVICES = ("scheduler", "worker", "kvstore")

#: Builds a child's command line from (service, flags); tests inject dummies.
CommandBuilder = Callable[[str, Sequence[str]], list[str]]


def serve_command(service: str, flags: Sequence[str]) -> list[str]:
    """The real command line of one service."""
    return [sys.executable, "-m", "fastswitch", "serve", service, *flags]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything listens, decided before any child starts."""

    run_dir: Path
    deployment_id: str
    port: int
    metrics_ports: Mapping[str, int]

    def unix(self, name: str) -> str:
        return f"unix://{self.run_dir / f'{name}.sock'}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One service process: its name (log file, metrics key), service kind, flags, health target."""

    name: str
    service: str
    flags: tuple[str, ...]
    health_target: str


def child_specs(cfg: DeploymentConfig, layout: Layout) -> list[ChildSpec]:
    """The flags of every child, in start order (kvstore, scheduler, workers)."""
    kv = layout.unix("kvstore")
    common = ("--deployment-id", layout.deployment_id, "--log-level", cfg.log_level)
    specs = [
        ChildSpec(
            "kvstore",
            "kvstore",
            (
                *("--listen", kv),
                *("--metrics-port", str(layout.metrics_ports["kvstore"])),
                *("--host-kv-gib", f"{cfg.host_kv_gib:g}"),
                *common,
            ),
            kv,
        ),
        ChildSpec(
            "scheduler",
            "scheduler",
            (
                *("--listen", layout.scheduler_address),
                *("--metrics-port", str(layout.metrics_ports["scheduler"])),
                *("--kvstore", kv),
                *("--model", cfg.model),
                *("--policy", cfg.policy),
                *("--mode", cfg.mode),
                *common,
                *cfg.extra_scheduler_args,
            ),
            layout.scheduler_address,
        ),
    ]
    for i in range(cfg.workers):
        specs.append(_worker_spec(cfg, layout, i, kv, common))
    return specs


def _worker_spec(
    cfg: DeploymentConfig, layout: Layout, i: int, kv: str, common: tuple[str, ...]
) -> ChildSpec:
    name = f"worker-{i}"
    blocks = (
        () if cfg.device_kv_blocks is None else ("--device-kv-blocks", str(cfg.device_kv_blocks))
    )
    flags = (
        *("--listen", layout.unix(name)),
        *("--metrics-port", str(layout.metrics_ports[name])),
        *("--scheduler", layout.scheduler_address),
        *("--kvstore", kv),
        *("--model", cfg.model),
        *("--worker-id", name),
        *("--mode", cfg.mode),
        *blocks,
        *common,
        *cfg.extra_worker_args,
    )
    return ChildSpec(name, "worker", flags, layout.unix(name))
