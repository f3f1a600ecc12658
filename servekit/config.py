"""Flag parsing helpers shared by the services: every flag has an environment fallback
(``FASTSWITCH_<FLAG>``), and one frozen config per service is validated once in ``main()``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from servekit.names import LOG_LEVELS


def env_default(flag: str, default: object, environ: Mapping[str, str] | None = None) -> object:
    """FASTSWITCH_<FLAG> from the environment if set (argparse applies `type`), else default."""
    env = os.environ if environ is None else environ
    key = "FASTSWITCH_" + flag.lstrip("-").replace("-", "_").upper()
    return env.get(key, default)


def package_version() -> str:
    """The installed ``fastswitch`` package's version ("unknown" in a tree never installed)."""
    try:
        return version("fastswitch")
    except PackageNotFoundError:
        return "unknown"


def add_common_flags(parser: argparse.ArgumentParser, *, listen: str, metrics_port: int) -> None:
    """--listen, --metrics-port, --log-level, --deployment-id (all with env fallbacks).
    ``listen`` "" means the service's internal Unix socket (servekit/planes.py)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--listen",
        default=env_default("--listen", listen),
        help="gRPC address: HOST:PORT or unix:///path.sock (default "
        + (listen or "unix:///tmp/fastswitch-<deployment-id>-<name>.sock")
        + ")",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=env_default("--metrics-port", metrics_port),
        help="Prometheus /metrics port on 127.0.0.1; 0 picks a free one (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-host",
        default=env_default("--metrics-host", "127.0.0.1"),
        help="address /metrics binds to: 0.0.0.0 for Prometheus in containers (%(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("--log-level", "info"),
        choices=LOG_LEVELS,
    )
    parser.add_argument(
        "--deployment-id",
        default=env_default("--deployment-id", "default"),
        help="names this deployment's shared-memory files (default %(default)s)",
    )


def parse_weights(text: str) -> dict[str, float]:
    """'a=1,b=2.5' -> {'a': 1.0, 'b': 2.5}; ValueError naming the bad item."""
    out: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=WEIGHT, got {item!r}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {value!r}") from None
        if weight <= 0:
            raise ValueError(f"weight of {name!r} must be > 0, got {weight}")
        out[name] = weight
    return out
