"""The flags of ``fastswitch up`` and ``fastswitch demo``, and the one mapping of them onto a
:class:`~fastswitch.deploy.DeploymentConfig`.

Under ``up`` every flag also reads ``FASTSWITCH_<FLAG>`` from the environment (a flag given on
the command line wins), as every service does (``servekit.config.env_default``). Boolean
variables take 1/true/yes/on or 0/false/no/off.
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastswitch.deploy import DeploymentConfig
from servekit.config import env_default
from servekit.names import LOG_LEVELS, MODES, POLICIES, PREEMPTIONS

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def add_deployment_args(
    p: argparse.ArgumentParser,
    *,
    port: int,
    workers: int,
    kv_blocks: int | None = None,
    http_port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Every deployment flag; `environ` gives the FASTSWITCH_* fallbacks ({}: none).
    `http_port` None: no HTTP door flags (the deployment starts none)."""
    env = os.environ if environ is None else environ

    def arg(flag: str, default: object, **kw: Any) -> None:
        p.add_argument(flag, default=env_default(flag, default, env), **kw)

    def switch(flag: str, help: str) -> None:
        p.add_argument(flag, action="store_true", default=_env_bool(flag, env), help=help)

    small = f"; {kv_blocks} here, small so that context switches happen" if kv_blocks else ""
    arg("--model", "tiny", help="'tiny' (embedded) or a Hugging Face model directory")
    arg("--workers", workers, type=int, help="worker processes (default %(default)s)")
    arg("--host", "127.0.0.1", help="address the public port and /metrics bind (%(default)s)")
    arg("--port", port, type=int, help="scheduler's public port; 0: any free (%(default)s)")
    arg(
        "--metrics-port",
        0,
        type=int,
        metavar="BASE",
        help="/metrics ports: scheduler BASE, store BASE+1, worker i BASE+2+i; 0: any free",
    )
    if http_port is not None:
        arg(
            "--http-port",
            http_port,
            type=int,
            help="the OpenAI-compatible HTTP API's port; 0: any free (%(default)s)",
        )
        switch("--no-http", "do not start the HTTP API (gRPC only)")
        arg(
            "--api-keys",
            None,
            type=Path,
            metavar="FILE",
            help="API keys of the gRPC API and the HTTP API: 'KEY TENANT [weight=W] "
            "[priority=P] [role=R]' lines (docs/security.md); default: open",
        )
        for flag, what in (
            (
                "--tls-cert",
                "certificate (PEM) of the public listeners: TLS on the scheduler's "
                "port and HTTPS on the HTTP API; with --tls-key",
            ),
            ("--tls-key", "the private key of --tls-cert"),
            (
                "--tls-ca",
                "CA that signed --tls-cert, which the launcher and the HTTP API trust "
                "(default: --tls-cert itself, for a self-signed one)",
            ),
        ):
            arg(flag, None, type=Path, metavar="PEM", help=what)
        arg(
            "--served-model-name", None, help="the model's name in the HTTP API (default: dir name)"
        )
        extra = env_default("--api-arg", None, env)
        p.add_argument(
            "--api-arg",
            action="append",
            default=[] if extra is None else [extra],
            metavar="ARGS",
            help="extra HTTP API flags, e.g. --api-arg='--max-in-flight 256'",
        )
    arg("--devices", "", help="worker devices: cuda:0,cuda:2 or cpu (default: cuda:i if any)")
    arg("--host-kv-gib", 0.25, type=float, help="host KV arena size (default %(default)s)")
    arg("--device-kv-blocks", kv_blocks, type=int, help=f"KV blocks per worker{small}")
    arg("--block-size", None, type=int, help="tokens per KV block (default: the worker's)")
    arg("--kvstore", None, help="use the running KV store at this address (default: start one)")
    arg("--policy", "vtc", choices=POLICIES, help="scheduling policy (%(default)s)")
    arg(
        "--mode",
        "fastswitch",
        choices=MODES,
        help="fastswitch; vllm-v1 (device prefix cache, recompute, no host tier); vllm-baseline "
        "(per-layer synchronous swaps, no reuse) (%(default)s)",
    )
    arg("--log-level", "info", choices=LOG_LEVELS)
    arg("--log-dir", None, type=Path, help="children's logs, kept after stop")
    switch("--verbose", "children log to this stderr")
    arg("--start-timeout", 120.0, type=float, help="seconds to wait for the start")


def add_service_args(
    p: argparse.ArgumentParser, *, environ: Mapping[str, str] | None = None
) -> None:
    """The scheduler's and workers' options that ``up`` passes through (FASTSWITCH_* fallbacks)."""
    env = os.environ if environ is None else environ
    g = p.add_argument_group("passed to the scheduler and the workers")

    def arg(flag: str, default: object, **kw: Any) -> None:
        g.add_argument(flag, default=env_default(flag, default, env), **kw)

    def switch(flag: str, help: str) -> None:
        g.add_argument(flag, action="store_true", default=_env_bool(flag, env), help=help)

    arg("--tenants", "", help="NAME=WEIGHT,... fairness weights (others weigh 1)")
    switch("--strict-tenants", "reject tenants not named in --tenants")
    arg("--preemption", None, choices=PREEMPTIONS, help="default: the mode's (vllm-v1 recompute)")
    arg("--retain-generate", None, type=float, metavar="TTL_S", help="retain Generate KV too")
    switch("--no-retain", "do not retain finished requests' KV")
    arg("--max-batched-tokens", None, type=int, help="token budget of one step")
    arg("--max-num-seqs", None, type=int, help="requests in one step at most")
    for service in ("scheduler", "worker"):
        flag = f"--{service}-arg"
        extra = env_default(flag, None, env)
        g.add_argument(
            flag,
            action="append",
            default=[] if extra is None else [extra],
            metavar="ARGS",
            help=f"extra {service} flags, e.g. {flag}='{_EXAMPLES[service]}'",
        )


def config_from_args(args: argparse.Namespace, *, keep_logs: bool) -> DeploymentConfig:
    """The config of the parsed flags (service options at their defaults when the parser has
    none); `keep_logs` gives a fresh log directory by default. ValueError names a bad value."""
    opts = {**_SERVICE_DEFAULTS, **vars(args)}
    log_dir = args.log_dir
    if log_dir is None and keep_logs and not args.verbose:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_dir = Path(tempfile.gettempdir()) / "fastswitch-logs" / f"{stamp}-{os.getpid()}"
    http = getattr(args, "http_port", None)
    if getattr(args, "no_http", False):
        http = None
    return DeploymentConfig(
        http_port=http,
        api_keys=getattr(args, "api_keys", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        tls_ca=getattr(args, "tls_ca", None),
        served_model_name=getattr(args, "served_model_name", None) if http is not None else None,
        extra_api_args=tuple(x for s in getattr(args, "api_arg", []) for x in shlex.split(s)),
        model=args.model,
        workers=args.workers,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()),
        host_kv_gib=args.host_kv_gib,
        device_kv_blocks=args.device_kv_blocks,
        block_size=args.block_size,
        kvstore=args.kvstore,
        policy=args.policy,
        mode=args.mode,
        tenants=opts["tenants"],
        strict_tenants=opts["strict_tenants"],
        preemption=opts["preemption"],
        retain_generate_s=opts["retain_generate"],
        retain=not opts["no_retain"],
        max_batched_tokens=opts["max_batched_tokens"],
        max_num_seqs=opts["max_num_seqs"],
        extra_scheduler_args=tuple(x for s in opts["scheduler_arg"] for x in shlex.split(s)),
        extra_worker_args=tuple(x for s in opts["worker_arg"] for x in shlex.split(s)),
        log_level=args.log_level,
        log_dir=log_dir,
        verbose=args.verbose,
        start_timeout_s=args.start_timeout,
    )


_EXAMPLES = {"scheduler": "--max-prefill-chunk 256", "worker": "--threads 4"}
_SERVICE_DEFAULTS: dict[str, Any] = {
    "tenants": "",
    "strict_tenants": False,
    "preemption": None,
    "retain_generate": None,
    "no_retain": False,
    "max_batched_tokens": None,
    "max_num_seqs": None,
    "scheduler_arg": [],
    "worker_arg": [],
}


def _env_bool(flag: str, env: Mapping[str, str]) -> bool:
    value = str(env_default(flag, "0", env)).strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError(
            f"{flag}: FASTSWITCH_* must be 1/0, true/false, yes/no or on/off; got {value!r}"
        )
    return value in _TRUE
