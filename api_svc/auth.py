"""API keys: who a request is, from its ``Authorization: Bearer KEY`` header.

With keys configured (``--api-keys FILE``), every ``/v1`` call needs one, and the key names the
tenant: a request cannot speak for another tenant by setting ``user``. Without keys the door is
open and the tenant comes from ``user`` (else ``default``). Keys are compared by their SHA-256
digest, so how long a lookup takes says nothing about how much of a guess was right.

The file has one key per line, ``KEY TENANT`` (``#`` starts a comment), or is a JSON object
``{"KEY": "TENANT", ...}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from api_svc.errors import ApiError


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class KeyRing:
    """Key digest -> tenant. Empty: the door is open."""

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        self._tenants = {_digest(k): t for k, t in (keys or {}).items()}

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Reads a key file; ValueError naming the line that is wrong."""
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err})") from None
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
                raise ValueError(f'{path}: expected {{"KEY": "TENANT", ...}}')
            keys = dict(data)
        else:
            keys = {}
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{path}:{n}: expected 'KEY TENANT', got {len(parts)} fields")
                keys[parts[0]] = parts[1]
        for key in keys:
            if len(key) < 8:
                raise ValueError(f"{path}: a key of {len(key)} characters is too short (>= 8)")
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of a request's Authorization header; None when keys are off.
        ApiError 401 when keys are on and the header is missing or the key unknown."""
        if not self._tenants:
            return None
        if not authorization:
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="invalid_api_key",
            )
        scheme, _, key = authorization.partition(" ")
        tenant = self._tenants.get(_digest(key.strip())) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ApiError(
                401, "invalid API key", type="authentication_error", code="invalid_api_key"
            )
        return tenant
