"""What a deployment starts, as one frozen config validated on construction, and the error of a
start."""

from __future__ import annotations

from dataclasses import dataclass

from servekit.names import LOG_LEVELS, MODES, POLICIES


class DeploymentError(RuntimeError):
    """A deployment failed to start (the message carries the failing child's log tail)."""


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """What to start; validated once on construction."""

    model: str = "tiny"
    workers: int = 1
    port: int = 50051
    host_kv_gib: float = 0.25
    device_kv_blocks: int | None = None
    policy: str = "vtc"
    mode: str = "fastswitch"
    log_level: str = "info"
    extra_scheduler_args: tuple[str, ...] = ()
    extra_worker_args: tuple[str, ...] = ()
    verbose: bool = False
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.host_kv_gib <= 0:
            raise ValueError(f"host_kv_gib must be > 0, got {self.host_kv_gib}")
        if self.device_kv_blocks is not None and self.device_kv_blocks <= 0:
            raise ValueError(f"device_kv_blocks must be > 0, got {self.device_kv_blocks}")
        for name, value, allowed in (
            ("policy", self.policy, POLICIES),
            ("mode", self.mode, MODES),
            ("log_level", self.log_level, LOG_LEVELS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.start_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("start_timeout_s and stop_timeout_s must be > 0")
