"""``python -m servekit.healthcheck [ADDRESS]``: exit 0 iff ADDRESS answers SERVING on
``grpc.health.v1``; 1 otherwise (the reason on stderr). The health probe of the container image.

ADDRESS defaults to the service's own ``FASTSWITCH_LISTEN``, with a wildcard host (``0.0.0.0``,
``[::]``) turned into loopback, so a compose health check needs no arguments::

    healthcheck:
      test: ["CMD", "python", "-m", "servekit.healthcheck"]

It imports only grpcio and its health stubs, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
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
        help="HOST:PORT or unix:///path (default: $FASTSWITCH_LISTEN, wildcard host -> loopback)",
    )
    p.add_argument("--service", default="", help="service name to ask about (default: overall)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default %(default)s)")
    args = p.parse_args(argv)
    if not args.address:
        print("healthcheck: no address given and FASTSWITCH_LISTEN is not set", file=sys.stderr)
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
