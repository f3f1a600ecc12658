"""API keys of the HTTP door: who a request is, from its ``Authorization: Bearer KEY`` header.

With keys configured (``--api-keys FILE``), every ``/v1`` call needs one, and the key names the
tenant: a request cannot speak for another tenant by setting ``user``. Without keys the door is
open and the tenant comes from ``user`` (else ``default``). The key ring and its file format are
shared with the scheduler's gRPC API (``servekit/keys.py``: ``KEY TENANT [weight=W]
[priority=P] [role=R]`` lines, or a JSON object); here only the tenant matters.
"""

from __future__ import annotations

from api_svc.errors import ApiError
from servekit import keys as _keys
from servekit.keys import Identity, UnknownKey

__all__ = ["Identity", "KeyRing"]


class KeyRing(_keys.KeyRing):
    """The shared key ring, whose missing or unknown keys answer the door's 401."""

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of a request's Authorization header; None when keys are off.
        ApiError 401 when keys are on and the header is missing or the key unknown."""
        try:
            return super().tenant_for(authorization)
        except UnknownKey as err:
            raise ApiError(
                401,
                str(err).replace("authorization:", "Authorization:"),
                type="authentication_error",
                code="invalid_api_key",
            ) from None
