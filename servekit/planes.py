"""The internal plane's guard: who may reach the worker step stream, the KV store and a worker.

FastSwitch has two planes. The public API (``fastswitch.v1.FastSwitch``) listens on the
scheduler's ``--listen``. Everything else -- the scheduler's StepLink (``--internal-listen``),
the KV store, a worker's own service -- is the internal plane, and this module is its one rule:

* An internal listener on a Unix socket is guarded by the file system (the socket's directory).
  It is the default: ``unix:///tmp/fastswitch-<deployment-id>-<name>.sock``
  (:func:`default_internal_address`); ``fastswitch up`` puts them in its run directory.
* An internal listener on TCP (compose, clusters) must have a **deployment secret**
  (``--deployment-secret-file PATH`` or ``FASTSWITCH_DEPLOYMENT_SECRET``) or mutual TLS
  (``--internal-tls-cert/--internal-tls-key/--internal-tls-ca``):
  :meth:`InternalPlane.check_listener` refuses to start one with neither.
* With a secret configured, every internal listener runs :class:`SecretCheck`: a call whose
  ``x-fastswitch-secret`` metadata is not the secret (``hmac.compare_digest``) ends with
  UNAUTHENTICATED before any servicer sees it. Only ``grpc.health.v1.Health`` is open, so
  container and orchestrator probes (which cannot send metadata) keep working; health tells
  nothing but "serving".
* Every internal client dials through :meth:`InternalPlane.channel`, which sends the secret
  on every call and uses TLS where configured.

The secret is never a flag value (command lines are visible to every user of the host).
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

SECRET_METADATA = "x-fastswitch-secret"
SECRET_ENV = "FASTSWITCH_DEPLOYMENT_SECRET"
SECRET_FILE_ENV = "FASTSWITCH_DEPLOYMENT_SECRET_FILE"
MIN_SECRET_CHARS = 16
#: Methods every caller may use without the secret (probes cannot send metadata).
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})
DENIED = "missing or wrong deployment secret (x-fastswitch-secret)"
#: The open plane: Unix sockets, no secret, no TLS (a frozen value, shared).
OPEN_PLANE: InternalPlane


def is_unix(address: str) -> bool:
    return address.startswith("unix:")


def default_internal_address(deployment_id: str, name: str) -> str:
    """A standalone service's internal listener when none is given: a Unix socket in /tmp named
    after the deployment, the same in every process of it (so a worker finds its scheduler)."""
    return f"unix:///tmp/fastswitch-{deployment_id}-{name}.sock"


def read_secret(path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The deployment secret: the file at ``path`` (surrounding whitespace stripped) if given,
    else ``FASTSWITCH_DEPLOYMENT_SECRET``, else None. ValueError (never showing the secret) when
    it is empty, shorter than 16 characters, or not printable ASCII (gRPC metadata)."""
    env = os.environ if environ is None else environ
    if path:
        try:
            secret = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--deployment-secret-file {path}: cannot read it ({err})") from None
        source = f"--deployment-secret-file {path}"
    elif env.get(SECRET_ENV):
        secret, source = env[SECRET_ENV].strip(), SECRET_ENV
    else:
        return None
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"{source}: the secret must have >= {MIN_SECRET_CHARS} characters")
    if not all(33 <= ord(c) < 127 for c in secret):
        raise ValueError(f"{source}: the secret must be printable ASCII without spaces")
    return secret


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of mutual TLS on the internal plane: this process's certificate and key (used
    both to serve and to dial) and the CA that signed every peer's certificate."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for flag, path in (
            ("--internal-tls-cert", self.cert),
            ("--internal-tls-key", self.key),
            ("--internal-tls-ca", self.ca),
        ):
            try:
                out.append(path.read_bytes())
            except OSError as err:
                raise ValueError(f"{flag} {path}: cannot read it ({err.strerror})") from None
        return out[0], out[1], out[2]


@dataclass(frozen=True, slots=True)
class InternalPlane:
    """How this process guards its internal listeners and dials its internal peers (see the
    module docstring). The default, ``InternalPlane()``, is open: Unix sockets only."""

    secret: str | None = None
    tls: TlsFiles | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"InternalPlane(secret={'set' if self.secret else None}, tls={self.tls})"

    def check_listener(self, address: str, flag: str) -> None:
        """ValueError for a TCP internal listener with neither a secret nor mutual TLS."""
        if not is_unix(address) and self.secret is None and self.tls is None:
            raise ValueError(
                f"{flag} {address} is TCP: the internal plane on TCP needs a deployment secret "
                f"(--deployment-secret-file or {SECRET_ENV}) or --internal-tls-*"
            )

    def server_interceptors(self) -> tuple[grpc.aio.ServerInterceptor, ...]:
        return () if self.secret is None else (SecretCheck(self.secret),)

    def server_credentials(self, address: str) -> grpc.ServerCredentials | None:
        """Mutual TLS credentials for a TCP listener (None: plaintext)."""
        if self.tls is None or is_unix(address):
            return None
        cert, key, ca = self.tls.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=True
        )

    def channel(
        self, target: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> grpc.aio.Channel:
        """A channel to an internal peer: the secret on every call, TLS over TCP if set."""
        interceptors = [] if self.secret is None else _secret_senders(self.secret)
        if self.tls is not None and not is_unix(target):
            cert, key, ca = self.tls.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
            return grpc.aio.secure_channel(target, creds, options, interceptors=interceptors)
        return grpc.aio.insecure_channel(target, options, interceptors=interceptors)


OPEN_PLANE = InternalPlane()


# ---------------------------------------------------------------- server side


class SecretCheck(grpc.aio.ServerInterceptor):
    """Lets a call through only with the secret in its metadata (or to an open method)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method in OPEN_METHODS or self._allowed(details.invocation_metadata):
            return await continuation(details)
        return _DENY

    def _allowed(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        given = next((v for k, v in metadata or () if k == SECRET_METADATA), None)
        if given is None:
            return False
        value = given if isinstance(given, bytes) else given.encode()
        return hmac.compare_digest(value, self._secret)


async def _deny(_requests: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # A stream handler answers every kind of call; the request is never read.
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


_DENY = grpc.stream_stream_rpc_method_handler(_deny)


# ---------------------------------------------------------------- client side


class _WithSecret:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(SECRET_METADATA, self._secret)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnary(_WithSecret, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_WithSecret, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_WithSecret, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_WithSecret, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _secret_senders(secret: str) -> list[grpc.aio.ClientInterceptor]:
    # grpc.aio files each interceptor under one call kind only: one object per kind.
    return [cls(secret) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


# ---------------------------------------------------------------- flags


def add_internal_flags(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None
) -> None:
    """--deployment-secret-file and --internal-tls-{cert,key,ca} (``FASTSWITCH_<FLAG>``
    fallbacks); the secret itself may also come from ``FASTSWITCH_DEPLOYMENT_SECRET``."""
    env = os.environ if environ is None else environ
    g = parser.add_argument_group("internal plane (docs/security.md)")
    g.add_argument(
        "--deployment-secret-file",
        default=env.get(SECRET_FILE_ENV, ""),
        metavar="PATH",
        help=f"file holding the deployment secret (else ${SECRET_ENV}); required for an "
        "internal listener on TCP, sent to every internal peer",
    )
    for part in ("cert", "key", "ca"):
        g.add_argument(
            f"--internal-tls-{part}",
            default=env.get(f"FASTSWITCH_INTERNAL_TLS_{part.upper()}", ""),
            metavar="PEM",
            help="mutual TLS on internal TCP listeners and channels: "
            + {"cert": "this service's certificate", "key": "its key", "ca": "the peers' CA"}[part],
        )


def plane_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> InternalPlane:
    """The :class:`InternalPlane` of parsed flags; ValueError names the offending flag."""
    secret = read_secret(args.deployment_secret_file or None, environ)
    parts = (args.internal_tls_cert, args.internal_tls_key, args.internal_tls_ca)
    if any(parts) and not all(parts):
        raise ValueError("--internal-tls-cert, --internal-tls-key and --internal-tls-ca go as one")
    tls = TlsFiles(*(Path(p) for p in parts)) if all(parts) else None
    if tls is not None:
        tls.read()  # unreadable files fail at start, in one line
    return InternalPlane(secret=secret, tls=tls)
