"""The client side of TLS on the public listeners: which roots a client trusts.

A client dials TLS with the roots of a CA file (for a self-signed certificate: the certificate
itself), or the system roots when it gives none; the server's certificate must name the host
the client dials (``localhost``/``127.0.0.1`` for a local one). A leaf module (grpc and ssl
only), so probes and the SDK can import it cheaply.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import grpc

#: Where a client finds the CA of a TLS server when none is given.
TLS_CA_ENV = "FASTSWITCH_TLS_CA"

CaPath = str | os.PathLike[str]


def read_pem(flag: str, path: CaPath) -> bytes:
    """The bytes of a PEM file; ValueError naming the flag and the file when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read it ({err.strerror})") from None


def read_ca(path: CaPath | None, flag: str = "tls_ca") -> bytes | None:
    """The PEM bytes of a CA file (None: none given, use the system roots)."""
    return None if not path else read_pem(flag, path)


def channel_credentials(ca: CaPath | None, flag: str = "tls_ca") -> grpc.ChannelCredentials:
    """gRPC client TLS that trusts the CA file ``ca`` (None: the system roots)."""
    return grpc.ssl_channel_credentials(root_certificates=read_ca(ca, flag))


def ssl_context(ca: CaPath | None, flag: str = "tls_ca") -> ssl.SSLContext:
    """An HTTPS client context that trusts the CA file ``ca`` (None: the system roots)."""
    if ca:
        read_pem(flag, ca)  # one line for an unreadable file, not ssl's own message
        return ssl.create_default_context(cafile=os.fspath(ca))
    return ssl.create_default_context()
