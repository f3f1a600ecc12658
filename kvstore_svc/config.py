"""The KV store's one frozen config, built from flags (with FASTSWITCH_<FLAG> fallbacks).

``--host-kv-gib auto`` sizes the arena from the shared memory the store has: the size of
``/dev/shm`` (its tmpfs capacity, ``os.statvfs``) less ``--shm-reserve-gib``, the room left for
the CPU workers' KV pools that live in the same ``/dev/shm``. In a container the size of
``/dev/shm`` is the container's ``shm_size``, so that one setting sizes both (docs/compose.md).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from kvstore_svc.arena import arena_bytes_for_gib, check_deployment_id
from servekit import shm
from servekit.config import package_version
from servekit.labels import DEFAULT_MAX_TENANTS
from servekit.names import LOG_LEVELS
from servekit.planes import (
    OPEN_PLANE,
    InternalPlane,
    add_internal_flags,
    default_internal_address,
    plane_from_args,
)

AUTO = "auto"  # --host-kv-gib auto
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})")


@dataclass(frozen=True, slots=True)
class KVStoreConfig:
    """``listen`` "" is the deployment's default Unix socket
    (``unix:///tmp/fastswitch-<deployment-id>-kvstore.sock``); a TCP ``listen`` needs the
    deployment secret or mutual TLS in ``plane`` (servekit/planes.py)."""

    listen: str = ""
    metrics_port: int = 9461
    deployment_id: str = "default"
    host_kv_gib: float = 1.0
    lease_s: float = 30.0
    log_level: str = "info"
    expire_interval_s: float = 0.5
    shutdown_grace_s: float = 5.0
    tenant_quota_blocks: int = 0  # retained hashed blocks per tenant; 0 = no quota
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 for Prometheus in containers
    shm_reserve_gib: float = 0.5  # --host-kv-gib auto: /dev/shm left to the CPU workers' pools
    host_kv_auto: bool = False  # host_kv_gib came from --host-kv-gib auto
    metrics_max_tenants: int = DEFAULT_MAX_TENANTS  # tenant label values; later ones: "_other"
    plane: InternalPlane = OPEN_PLANE

    def __post_init__(self) -> None:
        if not self.listen:
            address = default_internal_address(self.deployment_id, "kvstore")
            object.__setattr__(self, "listen", address)
        check_listen(self.listen)
        self.plane.check_listener(self.listen, "--listen")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port {self.metrics_port} not in [0, 65535]")
        check_deployment_id(self.deployment_id)
        if not (math.isfinite(self.host_kv_gib) and self.host_kv_gib > 0):
            raise ValueError(f"--host-kv-gib must be > 0, got {self.host_kv_gib}")
        if not (math.isfinite(self.shm_reserve_gib) and self.shm_reserve_gib >= 0):
            raise ValueError(f"--shm-reserve-gib must be >= 0, got {self.shm_reserve_gib}")
        if not (math.isfinite(self.lease_s) and self.lease_s > 0):
            raise ValueError(f"--lease-s must be > 0, got {self.lease_s}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level {self.log_level!r} not one of {LOG_LEVELS}")
        if self.tenant_quota_blocks < 0:
            raise ValueError(
                f"--tenant-quota-blocks must be >= 0 (0 = no quota), got {self.tenant_quota_blocks}"
            )
        if self.metrics_max_tenants < 0:
            raise ValueError(f"--metrics-max-tenants must be >= 0, got {self.metrics_max_tenants}")
        if not self.expire_interval_s > 0:
            raise ValueError(f"expire interval must be > 0, got {self.expire_interval_s}")

    @property
    def arena_bytes(self) -> int:
        return arena_bytes_for_gib(self.host_kv_gib)


def auto_host_kv_gib(shm_bytes: int, reserve_gib: float) -> float:
    """``--host-kv-gib auto``: ``shm_bytes`` (the size of /dev/shm) less ``reserve_gib``, in GiB;
    ``ValueError`` when nothing is left for the arena."""
    gib = shm_bytes / (1 << 30) - reserve_gib
    if not gib > 0:
        raise ValueError(
            f"--host-kv-gib auto: /dev/shm holds {shm_bytes / (1 << 30):.3g} GiB, nothing left "
            f"for the arena after --shm-reserve-gib {reserve_gib:g} (raise the shm size)"
        )
    return gib


def _host_kv_gib(value: object) -> float:
    try:
        return float(str(value))
    except ValueError:
        raise ValueError(
            f"--host-kv-gib must be a size in GiB or {AUTO!r}, got {value!r}"
        ) from None


def check_listen(listen: str) -> None:
    """``host:port`` (port 0 = any) or ``unix:///absolute/path.sock``; else ``ValueError``."""
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix://") if listen.startswith("unix://") else ""
        if not path.startswith("/"):
            raise ValueError(f"--listen {listen!r}: use unix:///absolute/path.sock")
        return
    match = _HOST_PORT.fullmatch(listen)
    if match is None or int(match["port"]) > 65535:
        raise ValueError(f"--listen {listen!r} is not host:port or unix:///path.sock")


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags; each default comes from ``FASTSWITCH_<FLAG>`` in ``env`` when set."""
    d = KVStoreConfig()

    def default(flag: str, fallback: object) -> object:
        return env.get("FASTSWITCH_" + flag.upper().replace("-", "_"), fallback)

    p = argparse.ArgumentParser(
        prog="fastswitch serve kvstore",
        description="FastSwitch KV store: owns the node's shared host arena (metadata over gRPC).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument(
        "--listen",
        default=default("listen", ""),
        help="unix:///path.sock (default unix:///tmp/fastswitch-<deployment-id>-kvstore.sock) "
        "or host:port (needs the deployment secret)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=default("metrics-port", d.metrics_port),
        help="Prometheus /metrics port (0 = any free port)",
    )
    p.add_argument(
        "--metrics-host",
        default=default("metrics-host", d.metrics_host),
        help="address /metrics binds to; 0.0.0.0 for Prometheus in containers",
    )
    p.add_argument("--deployment-id", default=default("deployment-id", d.deployment_id))
    p.add_argument(
        "--host-kv-gib",
        default=default("host-kv-gib", d.host_kv_gib),
        help="host arena size in GiB, or auto: the size of /dev/shm less --shm-reserve-gib",
    )
    p.add_argument(
        "--shm-reserve-gib",
        type=float,
        default=default("shm-reserve-gib", d.shm_reserve_gib),
        help="with --host-kv-gib auto: GiB of /dev/shm left to the CPU workers' KV pools "
        "(default %(default)s)",
    )
    p.add_argument(
        "--lease-s",
        type=float,
        default=default("lease-s", d.lease_s),
        help="default lease of reservations and pins, seconds",
    )
    p.add_argument(
        "--tenant-quota-blocks",
        type=int,
        default=default("tenant-quota-blocks", d.tenant_quota_blocks),
        help="retained (content-addressed) host blocks per tenant; beyond it the tenant's own "
        "least recently used unpinned blocks are evicted (0 = no quota)",
    )
    p.add_argument(
        "--metrics-max-tenants",
        type=int,
        default=default("metrics-max-tenants", d.metrics_max_tenants),
        help="distinct tenant label values in /metrics; later tenants are reported as "
        'tenant="_other" (default %(default)s)',
    )
    p.add_argument("--log-level", default=default("log-level", d.log_level))
    add_internal_flags(p, env)
    return p


def from_args(
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None = None,
    *,
    shm_bytes: Callable[[], int] = shm.capacity_bytes,
) -> KVStoreConfig:
    """Parses and validates once; ``ValueError`` names the offending value.

    ``argparse`` exits (status 2) on a malformed flag value, as command lines do.
    ``shm_bytes`` gives the size of /dev/shm, asked only for ``--host-kv-gib auto``.
    """
    environ = os.environ if env is None else env
    ns = parser(environ).parse_args(argv)
    reserve = float(ns.shm_reserve_gib)
    auto = str(ns.host_kv_gib).strip().lower() == AUTO
    host_kv_gib = auto_host_kv_gib(shm_bytes(), reserve) if auto else _host_kv_gib(ns.host_kv_gib)
    return KVStoreConfig(
        listen=ns.listen,
        metrics_port=int(ns.metrics_port),
        metrics_host=ns.metrics_host,
        deployment_id=ns.deployment_id,
        host_kv_gib=host_kv_gib,
        lease_s=float(ns.lease_s),
        log_level=str(ns.log_level).lower(),
        tenant_quota_blocks=int(ns.tenant_quota_blocks),
        shm_reserve_gib=reserve,
        host_kv_auto=auto,
        metrics_max_tenants=int(ns.metrics_max_tenants),
        plane=plane_from_args(ns, environ),
    )
