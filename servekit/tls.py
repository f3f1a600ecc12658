"""Server-side TLS of the public listeners: the scheduler's gRPC API (``--tls-cert/--tls-key``)
and the HTTP door (``--ssl-certfile/--ssl-keyfile``). Not mutual: clients are authenticated by
their API keys; mutual TLS of the internal plane is :mod:`servekit.planes`. The client side
(which roots a client trusts) is :mod:`client.tls`.

A listener is TLS when it has both a certificate and a key (PEM files); one without the other
is refused in one line (:func:`tls_pair`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from client.tls import read_pem


@dataclass(frozen=True, slots=True)
class TlsPair:
    """A listener's certificate chain and private key (PEM files)."""

    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        """The (cert, key) bytes; ValueError naming the file that cannot be read."""
        return read_pem("--tls-cert", self.cert), read_pem("--tls-key", self.key)

    def server_credentials(self) -> grpc.ServerCredentials:
        """gRPC server-side TLS (no client certificate asked)."""
        cert, key = self.read()
        return grpc.ssl_server_credentials([(key, cert)])


def tls_pair(
    cert: str | Path | None,
    key: str | Path | None,
    cert_flag: str = "--tls-cert",
    key_flag: str = "--tls-key",
) -> TlsPair | None:
    """The pair of two flags' values (None when both are empty); ValueError when only one is
    given or a file cannot be read, so a bad start fails at once, in one line."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = (cert_flag, key_flag) if cert else (key_flag, cert_flag)
        raise ValueError(f"{given} needs {missing} too (TLS takes a certificate and its key)")
    read_pem(cert_flag, cert)
    read_pem(key_flag, key)
    return TlsPair(Path(cert), Path(key))
