"""``fastswitch``: start a deployment (``up``), one service (``serve``), an offline run (``run``)
or a short demo (``demo``).

Services, the offline runner and the demo are imported only by the subcommand that needs them, so
``fastswitch --help`` stays fast and works on a partial install.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Sequence
from types import FrameType, ModuleType

from fastswitch.deploy import SERVICES, Deployment, DeploymentError, StartRefused
from fastswitch.options import add_deployment_args, add_service_args, config_from_args
from servekit.config import package_version
from servekit.memcpy_tuning import reexec_with_streaming_memcpy

_SERVICE_MODULES = {s: f"{s}_svc.server" for s in SERVICES}


class _Stop(KeyboardInterrupt):
    """SIGINT/SIGTERM: stop the deployment in order. A KeyboardInterrupt, so that no event loop
    callback mistakes it for an error to log and carry on."""


class _StopSignals:
    """While active, the first SIGINT or SIGTERM raises _Stop; once :meth:`hold` is called (or one
    fired), later ones are ignored, so that an ordered stop() runs to its end."""

    def __init__(self) -> None:
        self._held = False
        self._previous: dict[int, object] = {}

    def hold(self) -> None:
        self._held = True

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if not self._held:
            self._held = True
            raise _Stop(signal.Signals(signum).name)

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastswitch", description="Fairness-aware LLM serving with cheap context switches."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start a KV store, N workers, the scheduler and the HTTP API here; Ctrl-C stops them",
        description="Start a KV store, N workers, the scheduler and the OpenAI-compatible HTTP "
        "API on this machine, print the addresses, metrics ports and log directory, and run "
        "until Ctrl-C or SIGTERM. Every flag also reads FASTSWITCH_<FLAG> from the environment "
        "(e.g. FASTSWITCH_WORKERS=2). A bad "
        "model, a taken port or an unreachable store exits 2 with one line on stderr.",
    )
    add_deployment_args(up, port=50051, workers=1, http_port=8000)
    add_service_args(up)
    up.set_defaults(handler=_cmd_up)

    serve = sub.add_parser(
        "serve",
        help="run one service (flags go to the service: fastswitch serve SERVICE --help)",
        description="Run one service in this process; every flag after SERVICE is the service's.",
    )
    serve.add_argument("service", choices=SERVICES)

    sub.add_parser(
        "run",
        help="generate from one prompt in this process, no servers (see fastswitch run --help)",
        add_help=False,
    )

    demo = sub.add_parser(
        "demo",
        help="start a deployment, run a short multi-tenant workload, print a report, stop",
        description="Start a deployment, send a short concurrent workload from a few tenants "
        "through the SDK, print latency percentiles and per-tenant service, then stop.",
    )
    add_deployment_args(demo, port=0, workers=2, kv_blocks=48, environ={})
    # dest demo_tenants: `tenants` is the deployment's NAME=WEIGHT setting (config_from_args)
    demo.add_argument(
        "--tenants",
        dest="demo_tenants",
        type=int,
        default=3,
        help="how many tenants send the workload (%(default)s)",
    )
    demo.add_argument("--requests", type=int, default=24, help="requests in all (%(default)s)")
    demo.add_argument("--max-tokens", type=int, default=32, help="tokens per reply (%(default)s)")
    demo.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastswitch`` command; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `serve SERVICE` and `run` hand every later flag to code that parses its own.
    if len(args_list) >= 2 and args_list[0] == "serve" and args_list[1] in SERVICES:
        if argv is None and args_list[1] == "worker":  # this process is the worker
            reexec_with_streaming_memcpy()  # block-group swaps on the CPU at full speed
        return _serve(args_list[1], args_list[2:])
    if args_list and args_list[0] == "run":
        return _run(args_list[1:])
    try:
        args = build_parser().parse_args(args_list)
    except ValueError as err:  # a malformed FASTSWITCH_* boolean
        return _fail(str(err), code=2)
    except SystemExit as done:  # --help, or a usage error already printed
        return _exit_code(done)
    return int(args.handler(args))


def _deployment(args: argparse.Namespace, *, keep_logs: bool = False) -> Deployment:
    return Deployment(config_from_args(args, keep_logs=keep_logs), notify=_say)


def _say(line: str) -> None:
    """A deployment's event (a child exited, restarted, given up on), on this stderr."""
    print(f"fastswitch: {line}", file=sys.stderr, flush=True)


def _cmd_up(args: argparse.Namespace) -> int:
    try:
        dep = _deployment(args, keep_logs=True)
    except ValueError as err:
        return _fail(str(err), code=2)
    with _StopSignals() as signals:
        try:
            dep.start()
            _print_up(dep)
            gone = dep.wait()  # workers, the store and the door are restarted meanwhile
            return _fail(f"{gone} exited and is not restarted; stopping the deployment")
        except _Stop:
            print("stopping...", file=sys.stderr, flush=True)
            return 0
        except StartRefused as err:  # before any child started: one line
            return _fail(str(err), code=2)
        except DeploymentError as err:
            return _fail(str(err))
        finally:
            signals.hold()
            dep.stop()
            if dep.config.log_dir is not None and dep.config.log_dir.exists():
                print(f"logs kept in {dep.config.log_dir}", file=sys.stderr, flush=True)


def _print_up(dep: Deployment) -> None:
    cfg = dep.config
    print(f"FastSwitch is up at {dep.address}  (policy {cfg.policy}, mode {cfg.mode})")
    if cfg.http_port is not None:
        print(f"OpenAI-compatible API at {dep.http_url}/v1  (its /metrics and /health there too)")
    if cfg.trusted_ca is not None:
        print(f"TLS on: clients trust {cfg.trusted_ca} (AsyncClient(..., tls_ca=...))")
    if cfg.api_keys is not None:
        print(f"API keys on ({cfg.api_keys}); an admin key of this run: {dep.run_dir}/admin.key")
    else:
        print("API keys off: the API is open (any client may act as any tenant)")
    ports = ", ".join(f"{name} {port}" for name, port in dep.metrics_ports.items())
    print(f"metrics (http://{cfg.host}:PORT/metrics): {ports}")
    if dep.log_dir is not None:
        kept = " (kept after stop)" if cfg.log_dir is not None else ""
        print(f"logs: {dep.log_dir}{kept}")
    print("Ctrl-C or SIGTERM stops it.", flush=True)


def _cmd_demo(args: argparse.Namespace) -> int:
    from client import FastSwitchError
    from fastswitch import demo

    try:
        cfg = demo.DemoConfig(
            tenants=args.demo_tenants,
            requests=args.requests,
            max_tokens=args.max_tokens,
            concurrency=args.concurrency,
        )
        dep = _deployment(args)
    except ValueError as err:
        return _fail(str(err), code=2)
    with _StopSignals() as signals:
        try:
            dep.start()
            print(f"deployment up at {dep.address} with {args.workers} workers", flush=True)
            report = asyncio.run(demo.run_workload(dep.address, cfg))
            print(demo.format_report(report), flush=True)
            return 1 if report.failures else 0
        except _Stop:
            return 130
        except (DeploymentError, FastSwitchError) as err:
            return _fail(str(err))
        finally:
            signals.hold()
            dep.stop()


def _serve(service: str, argv: list[str]) -> int:
    module = _import_optional(_SERVICE_MODULES[service])
    if module is None:
        return _fail(f"service {service!r} is not available ({_SERVICE_MODULES[service]} missing)")
    return int(module.main(argv))


def _run(argv: list[str]) -> int:
    offline = _import_optional("fastswitch.offline")
    if offline is None:
        return _fail("`fastswitch run` is not available (fastswitch.offline is missing)")
    parser = argparse.ArgumentParser(
        prog="fastswitch run",
        description="Offline run: generate from one prompt in this process (no servers) and "
        "print the reply.",
    )
    offline.add_run_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return _exit_code(done)
    return int(offline.run_command(args))


def _import_optional(name: str) -> ModuleType | None:
    """The module, or None when it (not something it imports) does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            return None
        raise


def _fail(message: str, *, code: int = 1) -> int:
    print(f"fastswitch: error: {message}", file=sys.stderr, flush=True)
    return code


def _exit_code(done: SystemExit) -> int:
    return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
