"""``python -m servekit.healthcheck [ADDRESS]``: exit 0 iff ADDRESS answers SERVING on
``grpc.health.v1`` -- or, for an ``http://`` URL (the HTTP door), answers 200; 1 otherwise (the
reason on stderr). The health probe of the container image.

ADDRESS defaults to the service's own ``FASTSWITCH_LISTEN``, with a wildcard host (``0.0.0.0``,
``[::]``) turned into loopback, so a compose health check needs no arguments::

    healthcheck:
      test: ["CMD", "python", "-m", "servekit.healthcheck"]

It imports only grpcio and its health stubs, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}


def probe_address(listen: str) -> str:
    """The address a local probe dials for a server listening on ``listen``."""
    if listen.startswith("unix:"):
        return listen
    host, sep, port = listen.rpartition(":")
    if not sep:
        raise ValueError(f"not HOST:PORT or unix:///path: {listen!r}")
    return f"{_WILDCARDS.get(host, host)}:{port}"


def check(address: str, *, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status name (``SERVING``, ``NOT_SERVING``, ...) or the gRPC error."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def check_http(url: str, *, timeout_s: float = 3.0, ca: str | None = None) -> str:
    """``OK`` when a GET of `url` answers 200, else what it answered (or why it did not). An
    ``https://`` URL is verified against the CA file ``ca`` (None: the system roots)."""
    try:
        context = ssl.create_default_context(cafile=ca) if url.startswith("https://") else None
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
            return "OK" if resp.status == 200 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"no answer ({reason})"


async def wait_http_ok(url: str, *, timeout_s: float, ca: str | None = None) -> None:
    """Polls `url` until it answers 200; TimeoutError (with the last answer) after timeout_s.
    ``ca``: the CA file an ``https://`` URL is verified against."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s):// URL: {url!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer"
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{url} not answering 200 after {timeout_s:.0f}s ({last})")
        last = await asyncio.to_thread(check_http, url, timeout_s=min(1.0, remaining), ca=ca)
        if last == "OK":
            return
        await asyncio.sleep(0.05)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    p = argparse.ArgumentParser(
        prog="python -m servekit.healthcheck",
        description="Exit 0 iff a gRPC health service answers SERVING.",
    )
    p.add_argument(
        "address",
        nargs="?",
        default=env.get("FASTSWITCH_LISTEN", ""),
        help="HOST:PORT or unix:///path (default: $FASTSWITCH_LISTEN, wildcard host -> loopback)"
        ", or an http:// URL that must answer 200",
    )
    p.add_argument("--service", default="", help="service name to ask about (default: overall)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default %(default)s)")
    args = p.parse_args(argv)
    if not args.address:
        print("healthcheck: no address given and FASTSWITCH_LISTEN is not set", file=sys.stderr)
        return 1
    if args.address.startswith(("http://", "https://")):
        answer = check_http(args.address, timeout_s=args.timeout)
        if answer == "OK":
            return 0
        print(f"healthcheck: {args.address}: {answer}", file=sys.stderr)
        return 1
    try:
        address = probe_address(args.address)
    except ValueError as err:
        print(f"healthcheck: {err}", file=sys.stderr)
        return 1
    status = check(address, service=args.service, timeout_s=args.timeout)
    if status == "SERVING":
        return 0
    print(f"healthcheck: {address}: {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
