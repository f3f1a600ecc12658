"""api_svc process: flags and environment, the uvicorn server, draining on SIGTERM.

``fastswitch serve api --scheduler 127.0.0.1:50051 --model DIR`` listens on 127.0.0.1:8000 by
default. SIGTERM/SIGINT: new generation requests get 503 and ``/health`` says draining, requests
in flight finish (up to ``--drain-s``), then the listener closes and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from api_svc.app import DoorState, create_app
from api_svc.auth import KeyRing
from api_svc.door import Door, DoorConfig
from api_svc.metrics import ApiMetrics
from client.aio import AsyncClient
from client.tls import read_ca
from servekit.config import env_default, package_version
from servekit.keys import read_key_file
from servekit.logs import setup_logging
from servekit.modelspec import TINY_MODEL, load_model_spec
from servekit.names import LOG_LEVELS
from servekit.parent import watch_parent
from servekit.service import run
from servekit.tls import TlsPair, tls_pair
from servekit.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str
    port: int
    uds: str | None
    scheduler: str
    model: str
    served_model_names: tuple[str, ...]
    api_keys: str | None
    scheduler_api_key_file: str | None
    max_body_bytes: int
    max_in_flight: int
    default_max_tokens: int
    chat_retain_ttl_s: float | None
    request_timeout_s: float
    drain_s: float
    log_level: str
    tls: TlsPair | None = None  # --ssl-certfile/--ssl-keyfile: HTTPS (None: plain HTTP)
    scheduler_tls_ca: str | None = None  # dial the scheduler with TLS, trusting this CA
    multiplex: bool = True  # every request on one GenerateMany call (--scheduler-calls shared)

    def __post_init__(self) -> None:
        if self.max_body_bytes <= 0:
            raise ValueError(f"--max-body-bytes must be > 0, got {self.max_body_bytes}")
        if self.max_in_flight <= 0:
            raise ValueError(f"--max-in-flight must be > 0, got {self.max_in_flight}")
        if self.default_max_tokens <= 0:
            raise ValueError(f"--default-max-tokens must be > 0, got {self.default_max_tokens}")
        if self.chat_retain_ttl_s is not None and self.chat_retain_ttl_s < 0:
            raise ValueError(f"--chat-retain-s must be >= 0, got {self.chat_retain_ttl_s}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"--request-timeout-s must be > 0, got {self.request_timeout_s}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastswitch serve api",
        description="The OpenAI-compatible HTTP front door: /v1/models, /v1/completions, "
        "/v1/chat/completions (stream: true as server-sent events), /health, /metrics. "
        "Every flag also reads FASTSWITCH_<FLAG> from the environment.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    p.add_argument(
        "--listen",
        default=env_default("--listen", "127.0.0.1:8000"),
        help="HOST:PORT (port 0 picks a free one) or unix:///path.sock (default %(default)s)",
    )
    p.add_argument(
        "--scheduler",
        default=env_default("--scheduler", "127.0.0.1:50051"),
        help="the scheduler's gRPC address (default %(default)s)",
    )
    p.add_argument(
        "--model",
        default=env_default("--model", TINY_MODEL),
        help="tiny or a Hugging Face directory: its tokenizer and chat template (no weights are "
        "read); the same model the scheduler serves (default %(default)s)",
    )
    p.add_argument(
        "--served-model-name",
        action="append",
        default=None,
        help="the name clients send as 'model' (repeatable: aliases); default the directory's name",
    )
    p.add_argument(
        "--api-keys",
        default=env_default("--api-keys", None),
        metavar="FILE",
        help="API keys: lines 'KEY TENANT' or a JSON object; a key names its tenant. Without it "
        "the door is open and the tenant is the request's 'user' (else 'default')",
    )
    p.add_argument(
        "--scheduler-api-key-file",
        default=env_default("--scheduler-api-key-file", None),
        metavar="FILE",
        help="the key this door sends to the scheduler (a bare key, or a key-file line whose "
        "first word is the key): a 'service' key, which may act for the tenants this door "
        "authenticates. Default: $FASTSWITCH_API_KEY, else none (a scheduler without keys)",
    )
    p.add_argument(
        "--ssl-certfile",
        default=env_default("--ssl-certfile", None),
        metavar="PEM",
        help="serve HTTPS with this certificate (chain); with --ssl-keyfile (default: HTTP)",
    )
    p.add_argument(
        "--ssl-keyfile",
        default=env_default("--ssl-keyfile", None),
        metavar="PEM",
        help="the private key of --ssl-certfile",
    )
    p.add_argument(
        "--scheduler-tls-ca",
        default=env_default("--scheduler-tls-ca", None),
        metavar="PEM",
        help="dial the scheduler with TLS (one started with --tls-cert), trusting this CA file "
        "(a self-signed certificate: the certificate itself); default: plaintext",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=env_default("--max-body-bytes", 8 << 20),
        help="larger request bodies get 413 (default %(default)s)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=env_default("--max-in-flight", 4096),
        help="generation requests answered at once; more get 429 (default %(default)s)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=env_default("--default-max-tokens", 4096),
        help="max_tokens of a request that gives none: the rest of the context, at most this "
        "(keep it <= the scheduler's --max-tokens-limit; default %(default)s)",
    )
    p.add_argument(
        "--chat-retain-s",
        type=float,
        default=env_default("--chat-retain-s", 0.0),
        metavar="TTL_S",
        help="keep each chat completion's KV in the host arena this long for the next turn, "
        "which resends the history (0: until evicted; default %(default)s)",
    )
    p.add_argument(
        "--no-chat-retain",
        action="store_true",
        help="do not retain chat completions' KV (the next turn recomputes its history)",
    )
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=env_default("--request-timeout-s", 3600.0),
        help="deadline of one request's scheduler call (default %(default)s)",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=env_default("--drain-s", 30.0),
        help="on SIGTERM, how long requests in flight may finish (default %(default)s)",
    )
    p.add_argument(
        "--scheduler-calls",
        choices=("shared", "per-request"),
        default=env_default("--scheduler-calls", "shared"),
        help="shared: every request on one multiplexed GenerateMany call to the scheduler (one "
        "message per step for all streams); per-request: one Generate call each "
        "(default %(default)s)",
    )
    p.add_argument("--log-level", default=env_default("--log-level", "info"), choices=LOG_LEVELS)
    return p


def config_from_args(args: argparse.Namespace) -> ApiConfig:
    listen: str = args.listen
    uds: str | None = None
    host, port = "", 0
    if listen.startswith("unix://"):
        uds = listen.removeprefix("unix://")
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"--listen must be HOST:PORT or unix:///path, got {listen!r}")
        host, port = host.strip("[]") or "127.0.0.1", int(port_text)
    names = tuple(args.served_model_name or (_default_name(args.model),))
    return ApiConfig(
        host=host,
        port=port,
        uds=uds,
        scheduler=args.scheduler,
        model=args.model,
        served_model_names=names,
        api_keys=args.api_keys,
        scheduler_api_key_file=args.scheduler_api_key_file,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        default_max_tokens=args.default_max_tokens,
        chat_retain_ttl_s=None if args.no_chat_retain else args.chat_retain_s,
        request_timeout_s=args.request_timeout_s,
        drain_s=args.drain_s,
        log_level=args.log_level,
        multiplex=args.scheduler_calls == "shared",
        tls=tls_pair(args.ssl_certfile, args.ssl_keyfile, "--ssl-certfile", "--ssl-keyfile"),
        scheduler_tls_ca=args.scheduler_tls_ca or None,
    )


def _default_name(model: str) -> str:
    return TINY_MODEL if model == TINY_MODEL else (Path(model).resolve().name or model)


class _Server(uvicorn.Server):
    """Uvicorn without its own signal handling: this process drains first (see serve)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(cfg: ApiConfig) -> socket.socket:
    if cfg.uds is not None:
        Path(cfg.uds).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(cfg.uds)
    else:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _drain(state: DoorState, server: uvicorn.Server, drain_s: float) -> None:
    state.draining = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    while state.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight:
        log.warning("drain timed out", extra={"in_flight": state.in_flight})
    server.should_exit = True


async def serve(cfg: ApiConfig) -> int:
    spec = load_model_spec(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    keys = KeyRing.from_file(cfg.api_keys) if cfg.api_keys else KeyRing()
    key = read_key_file(cfg.scheduler_api_key_file) if cfg.scheduler_api_key_file else None
    client = AsyncClient(
        cfg.scheduler,
        timeout_s=cfg.request_timeout_s,
        api_key=key,
        tls_ca=cfg.scheduler_tls_ca,
        multiplex=cfg.multiplex,
    )
    door = Door(
        client,
        tokenizer,
        spec,
        DoorConfig(
            model_names=cfg.served_model_names,
            default_max_tokens=cfg.default_max_tokens,
            chat_retain_ttl_s=cfg.chat_retain_ttl_s,
            request_timeout_s=cfg.request_timeout_s,
        ),
    )
    metrics = ApiMetrics(CollectorRegistry(), cfg.served_model_names[0])
    app, state = create_app(
        door, keys, metrics, max_body_bytes=cfg.max_body_bytes, max_in_flight=cfg.max_in_flight
    )
    sock = _bind(cfg)
    config = uvicorn.Config(
        app,
        loop="none",  # already on uvloop (servekit.service.run)
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # nothing here reads the client's address: no wrapper per request
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
        ssl_certfile=None if cfg.tls is None else str(cfg.tls.cert),
        ssl_keyfile=None if cfg.tls is None else str(cfg.tls.key),
    )
    server = _Server(config)
    # what startup built (templates, schemas, gRPC and FastAPI modules) lives as long as the
    # process: out of the collector's generations, full collections under load stay short
    gc.freeze()
    loop = asyncio.get_running_loop()
    drain: asyncio.Task[None] | None = None

    def on_signal() -> None:
        nonlocal drain
        if drain is None:
            log.info("draining", extra={"in_flight": state.in_flight})
            drain = loop.create_task(_drain(state, server, cfg.drain_s))
        else:
            server.force_exit = True  # a second signal: stop now

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    unwatch = watch_parent(on_signal)  # the launcher died: drain and stop as on SIGTERM
    where = cfg.uds or f"{cfg.host}:{sock.getsockname()[1]}"
    log.info(
        "api ready",
        extra={
            "listen": where,
            "scheduler": cfg.scheduler,
            "model": cfg.served_model_names[0],
            "keys": keys.enabled,
            "tls": cfg.tls is not None,
        },
    )
    scheme = "http" if cfg.tls is None else "https"
    print(f"{scheme} api listening on {where}", flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        if cfg.uds is not None:
            Path(cfg.uds).unlink(missing_ok=True)
        await client.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if unwatch is not None:
            unwatch()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("api", args.log_level)
    try:
        cfg = config_from_args(args)
        load_model_spec(cfg.model)
        if cfg.api_keys:
            KeyRing.from_file(cfg.api_keys)  # a bad key file fails here, in one line
        if cfg.scheduler_api_key_file:
            read_key_file(cfg.scheduler_api_key_file)
        read_ca(cfg.scheduler_tls_ca, "--scheduler-tls-ca")
    except (ValueError, OSError) as err:
        print(f"fastswitch serve api: {err}", file=sys.stderr)
        return 2
    return run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
