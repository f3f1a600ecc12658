"""What a deployment starts, as one frozen config validated on construction, and the errors of a
start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastswitch.deploy.placement import worker_devices
from servekit.names import LOG_LEVELS, MODES, POLICIES, PREEMPTIONS


class DeploymentError(RuntimeError):
    """A deployment failed to start (the message carries the failing child's log tail)."""


class StartRefused(DeploymentError):
    """A deployment refused to start before any child ran: a bad model, a taken port, an
    unreachable store. The message is one line, fit for an operator's terminal."""


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """What to start; validated once on construction.

    ``None`` for a service option means "the service's own default" (no flag is passed).
    ``metrics_port`` 0 gives every child a free port; a base B gives the scheduler B, the store
    B+1 and worker i B+2+i. ``devices`` empty places worker i on ``cuda:i`` when CUDA is present
    (else the worker's own choice); one entry is every worker's, N entries one per worker.
    ``log_dir`` None keeps the children's logs in the runtime directory, removed on stop; a
    directory keeps them there after stop. ``kvstore`` names a running store to use instead of
    starting one; a deployment has its store in every mode, ``vllm-v1`` included (its scheduler
    swaps, and so uses the store, only when ``preemption`` says swap). ``http_port`` starts
    the OpenAI-compatible HTTP door (api_svc) on that port (0: a free one); None starts none.
    ``api_keys`` is the key file of both the scheduler's API and the door (docs/security.md);
    the launcher adds keys of its own (``deploy/keys.py``).
    ``tls_cert``/``tls_key`` (both or neither) make the public listeners TLS: the scheduler's
    gRPC port and the door's HTTPS; ``tls_ca`` is the CA the launcher, the door and clients
    trust for them (None: the certificate itself, for a self-signed one). The certificate must
    name the address the launcher dials (``127.0.0.1``, or ``host`` when not a wildcard).
    ``restart``: once started, a worker, the store or the door that exits is started again after
    ``restart_backoff_s`` (doubling up to ``restart_max_backoff_s``), until it exits quickly
    more than ``max_restarts`` times in a row (``fastswitch/deploy/supervisor.py``).
    """

    model: str = "tiny"
    workers: int = 1
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0
    host_kv_gib: float = 0.25
    device_kv_blocks: int | None = None
    block_size: int | None = None
    devices: tuple[str, ...] = ()
    policy: str = "vtc"
    mode: str = "fastswitch"
    log_level: str = "info"
    tenants: str = ""
    strict_tenants: bool = False
    preemption: str | None = None
    retain_generate_s: float | None = None
    retain: bool = True
    max_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    kvstore: str | None = None
    http_port: int | None = None
    api_keys: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    served_model_name: str | None = None
    extra_api_args: tuple[str, ...] = ()
    extra_scheduler_args: tuple[str, ...] = ()
    extra_worker_args: tuple[str, ...] = ()
    log_dir: Path | None = None
    verbose: bool = False
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 10.0
    restart: bool = True
    restart_backoff_s: float = 0.5
    restart_max_backoff_s: float = 30.0
    max_restarts: int = 5

    @property
    def trusted_ca(self) -> Path | None:
        """The CA file that verifies the public listeners (None: they are plaintext)."""
        return self.tls_ca or self.tls_cert

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        if not self.host:
            raise ValueError("host must not be empty")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
        if self.http_port is None and self.served_model_name:
            raise ValueError("served_model_name needs the HTTP door (http_port)")
        if not 0 <= self.metrics_port <= 65535 - (self.workers + 1):
            raise ValueError(
                f"metrics_port must be 0 or a base leaving room for {self.workers + 2} ports, "
                f"got {self.metrics_port}"
            )
        if self.host_kv_gib <= 0:
            raise ValueError(f"host_kv_gib must be > 0, got {self.host_kv_gib}")
        for name, count in (
            ("device_kv_blocks", self.device_kv_blocks),
            ("block_size", self.block_size),
            ("max_batched_tokens", self.max_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
        ):
            if count is not None and count <= 0:
                raise ValueError(f"{name} must be > 0, got {count}")
        if self.devices:
            worker_devices(self.devices, self.workers)  # ValueError for a bad list
        if self.retain_generate_s is not None and self.retain_generate_s < 0:
            raise ValueError(f"retain_generate_s must be >= 0, got {self.retain_generate_s}")
        for name, value, allowed in (
            ("policy", self.policy, POLICIES),
            ("mode", self.mode, MODES),
            ("log_level", self.log_level, LOG_LEVELS),
            ("preemption", self.preemption or PREEMPTIONS[0], PREEMPTIONS),  # None: the mode's
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.start_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("start_timeout_s and stop_timeout_s must be > 0")
        if not 0 < self.restart_backoff_s <= self.restart_max_backoff_s:
            raise ValueError(
                f"restart back-off must satisfy 0 < {self.restart_backoff_s} <= "
                f"{self.restart_max_backoff_s} (restart_backoff_s, restart_max_backoff_s)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together (TLS takes a certificate and its key)"
            )
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key (the listeners are plaintext)")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
