"""Checks made before any child starts, each failing in one line (:class:`StartRefused`): the
model loads, the TLS files are a certificate and its key, the ports are free, an external KV
store answers, the devices can be placed."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping

from client.tls import read_pem
from fastswitch.deploy.bridge import run_sync
from fastswitch.deploy.config import DeploymentConfig, StartRefused
from fastswitch.deploy.placement import worker_devices
from fastswitch.deploy.ports import port_is_free
from servekit.modelspec import load_model_spec
from servekit.service import wait_healthy

_STORE_TIMEOUT_S = 5.0


def check_model(model: str) -> None:
    """The model's spec loads (``tiny``, or a directory with config.json and safetensors)."""
    try:
        load_model_spec(model)
    except (OSError, ValueError) as err:
        raise StartRefused(f"bad model {model!r}: {_one_line(err)}") from None


def check_tls(cfg: DeploymentConfig) -> None:
    """``--tls-cert``, ``--tls-key`` and ``--tls-ca`` can be read, and the first two are a PEM
    certificate and its private key (else the scheduler would fail at start, in its log)."""
    if cfg.tls_cert is None or cfg.tls_key is None:
        return
    files = (("--tls-cert", cfg.tls_cert), ("--tls-key", cfg.tls_key), ("--tls-ca", cfg.tls_ca))
    try:
        for flag, path in files:
            if path is not None:
                read_pem(flag, path)
    except ValueError as err:
        raise StartRefused(str(err)) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except ssl.SSLError:  # its text names OpenSSL's source lines, not the problem
        raise StartRefused(
            f"--tls-cert {cfg.tls_cert} and --tls-key {cfg.tls_key} are not a PEM certificate "
            "and its private key"
        ) from None


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """Every port (by what uses it) can be bound on `host` now."""
    for what, port in ports.items():
        if not port_is_free(port, host):
            raise StartRefused(
                f"port {port} on {host} ({what}) is in use; pick another "
                f"(--port / --http-port / --metrics-port; 0: any free one)"
            )


def check_store(address: str, timeout_s: float) -> None:
    """The external KV store at `address` answers SERVING on gRPC health."""
    try:
        run_sync(lambda: wait_healthy(address, timeout_s=min(timeout_s, _STORE_TIMEOUT_S)))
    except TimeoutError as err:
        raise StartRefused(f"the KV store at {address} is unreachable: {err}") from None


def place(cfg: DeploymentConfig, cuda_count: Callable[[], int] | None = None) -> tuple[str, ...]:
    """The device of each worker (:func:`worker_devices`), or StartRefused."""
    try:
        if cuda_count is None:
            return worker_devices(cfg.devices, cfg.workers)
        return worker_devices(cfg.devices, cfg.workers, cuda_count)
    except ValueError as err:
        raise StartRefused(str(err)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
