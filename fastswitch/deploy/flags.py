"""The one place that maps a deployment (its config and its layout) to the services' flags."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastswitch.deploy.config import DeploymentConfig
from fastswitch.deploy.keys import DOOR_KEY, SCHEDULER_KEYS

SERVICES = ("api", "scheduler", "worker", "kvstore")

#: Builds a child's command line from (service, flags); tests inject dummies.
CommandBuilder = Callable[[str, Sequence[str]], list[str]]


def serve_command(service: str, flags: Sequence[str]) -> list[str]:
    """The real command line of one service."""
    return [sys.executable, "-m", "fastswitch", "serve", service, *flags]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything listens and runs, decided before any child starts.

    ``host`` is what the public port and every /metrics bind; ``kvstore`` an external store's
    address (None: the deployment's own, on a Unix socket); ``devices`` one per worker, or ()
    for each worker's own choice.
    """

    run_dir: Path
    deployment_id: str
    port: int
    metrics_ports: Mapping[str, int]
    host: str = "127.0.0.1"
    kvstore: str | None = None
    devices: tuple[str, ...] = ()
    http_port: int | None = None
    tls: bool = False  # the public listeners are TLS (https:// for the door)

    def unix(self, name: str) -> str:
        return f"unix://{self.run_dir / f'{name}.sock'}"

    @property
    def scheduler_listen(self) -> str:
        """What the scheduler binds: ``host:port``."""
        return f"{_bracketed(self.host)}:{self.port}"

    @property
    def scheduler_address(self) -> str:
        """Where this machine reaches the scheduler (loopback when it binds every address)."""
        return f"{_bracketed(_reachable(self.host))}:{self.port}"

    @property
    def scheduler_internal(self) -> str:
        """The scheduler's worker plane (StepLink), a Unix socket in the run dir: workers dial
        it; the public port cannot route StepLink (docs/security.md)."""
        return self.unix("scheduler-internal")

    @property
    def http_url(self) -> str | None:
        """Where this machine reaches the HTTP door, ``http://127.0.0.1:PORT`` (``https://`` with
        TLS; None: no door)."""
        if self.http_port is None:
            return None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{_bracketed(_reachable(self.host))}:{self.http_port}"

    @property
    def kvstore_address(self) -> str:
        return self.kvstore or self.unix("kvstore")


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One service process: its name (log file, metrics key), service kind, flags, health target
    (a gRPC address, or an ``http(s)://`` URL that answers 200 once the process serves) and the
    CA file that verifies the target's TLS (None: plaintext)."""

    name: str
    service: str
    flags: tuple[str, ...]
    health_target: str
    health_ca: str | None = None


def child_specs(cfg: DeploymentConfig, layout: Layout) -> list[ChildSpec]:
    """The flags of every child, in start order (kvstore unless external, scheduler, the HTTP door
    when it has a port, workers).

    Options left None are not passed (the service's own default holds); the extra arguments come
    last, so they override what comes before."""
    kv = layout.kvstore_address
    common = ("--deployment-id", layout.deployment_id, "--log-level", cfg.log_level)
    specs = [] if layout.kvstore else [_kvstore_spec(cfg, layout, common)]
    scheduler = (
        *("--listen", layout.scheduler_listen),
        *("--internal-listen", layout.scheduler_internal),
        *_metrics(layout, "scheduler"),
        *("--kvstore", kv),
        *("--model", cfg.model),
        *("--policy", cfg.policy),
        *("--mode", cfg.mode),
        *_keys(cfg, layout),
        *_opt("--tls-cert", cfg.tls_cert),
        *_opt("--tls-key", cfg.tls_key),
        *_opt("--tenants", cfg.tenants or None),
        *(("--strict-tenants",) if cfg.strict_tenants else ()),
        *_opt("--preemption", cfg.preemption),
        *_opt("--retain-generate", cfg.retain_generate_s),
        *(() if cfg.retain else ("--no-retain",)),
        *_opt("--max-batched-tokens", cfg.max_batched_tokens),
        *_opt("--max-num-seqs", cfg.max_num_seqs),
        *common,
        *cfg.extra_scheduler_args,
    )
    ca = None if cfg.trusted_ca is None else str(cfg.trusted_ca)
    specs.append(ChildSpec("scheduler", "scheduler", scheduler, layout.scheduler_address, ca))
    if layout.http_url is not None:
        specs.append(_api_spec(cfg, layout))
    for i in range(cfg.workers):
        specs.append(_worker_spec(cfg, layout, i, common))
    return specs


def _kvstore_spec(cfg: DeploymentConfig, layout: Layout, common: tuple[str, ...]) -> ChildSpec:
    kv = layout.unix("kvstore")
    flags = (
        *("--listen", kv),
        *_metrics(layout, "kvstore"),
        *("--host-kv-gib", f"{cfg.host_kv_gib:g}"),
        *common,
    )
    return ChildSpec("kvstore", "kvstore", flags, kv)


def _api_spec(cfg: DeploymentConfig, layout: Layout) -> ChildSpec:
    flags = (
        *("--listen", f"{_bracketed(layout.host)}:{layout.http_port}"),
        *("--scheduler", layout.scheduler_address),
        *("--model", cfg.model),
        *_opt("--api-keys", cfg.api_keys),
        *_opt("--scheduler-api-key-file", layout.run_dir / DOOR_KEY if cfg.api_keys else None),
        *_opt("--served-model-name", cfg.served_model_name),
        *_opt("--ssl-certfile", cfg.tls_cert),
        *_opt("--ssl-keyfile", cfg.tls_key),
        *_opt("--scheduler-tls-ca", cfg.trusted_ca),
        *("--log-level", cfg.log_level),
        *cfg.extra_api_args,
    )
    ca = None if cfg.trusted_ca is None else str(cfg.trusted_ca)
    return ChildSpec("api", "api", flags, f"{layout.http_url}/version", ca)


def _worker_spec(
    cfg: DeploymentConfig, layout: Layout, i: int, common: tuple[str, ...]
) -> ChildSpec:
    name = f"worker-{i}"
    flags = (
        *("--listen", layout.unix(name)),
        *_metrics(layout, name),
        *("--scheduler", layout.scheduler_internal),
        *("--kvstore", layout.kvstore_address),
        *("--model", cfg.model),
        *("--worker-id", name),
        *("--mode", cfg.mode),
        *_opt("--device-kv-blocks", cfg.device_kv_blocks),
        *_opt("--block-size", cfg.block_size),
        *_opt("--device", layout.devices[i] if layout.devices else None),
        *common,
        *cfg.extra_worker_args,
    )
    return ChildSpec(name, "worker", flags, layout.unix(name))


def _keys(cfg: DeploymentConfig, layout: Layout) -> tuple[str, ...]:
    """The scheduler's key files: the user's and the launcher's own (none: the API is open)."""
    if cfg.api_keys is None:
        return ()
    return ("--api-keys", str(cfg.api_keys), "--api-keys", str(layout.run_dir / SCHEDULER_KEYS))


def _metrics(layout: Layout, name: str) -> tuple[str, ...]:
    port = ("--metrics-port", str(layout.metrics_ports[name]))
    return port if layout.host == "127.0.0.1" else (*port, "--metrics-host", layout.host)


def _opt(flag: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    return (flag, f"{value:g}" if isinstance(value, float) else str(value))


def _reachable(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
