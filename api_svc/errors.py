"""Errors of the HTTP door in OpenAI's shape, and the one mapping from the SDK's errors to them.

Every failure a client sees is ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status OpenAI uses: 400 a bad parameter, 401 a missing or unknown key, 404 an unknown model or
route, 413 a body over the limit, 429 over capacity, 503 no worker yet or draining, 500 a failure
of ours (the message says what, never a traceback).
"""

from __future__ import annotations

from typing import Any

from client import errors as sdk


class ApiError(Exception):
    """A failed request: HTTP ``status`` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unsupported(param: str, what: str) -> ApiError:
    """A parameter OpenAI defines that this server does not implement: a clear 400."""
    return ApiError(400, f"{param}: {what} is not supported", param=param, code="unsupported")


# The scheduler says RESOURCE_EXHAUSTED both for "this request can never fit a worker" (a client
# error: 400, as OpenAI answers a prompt over the context) and "the queue is full" (429: retry).
_NEVER_FITS = "exceed"


def from_sdk(err: sdk.FastSwitchError) -> ApiError:
    """The HTTP error for a failed scheduler call."""
    msg = err.details or str(err)
    if isinstance(err, sdk.InvalidArgument):
        return ApiError(400, msg)
    if isinstance(err, sdk.NotFound):
        return ApiError(404, msg, code="not_found")
    if isinstance(err, sdk.ResourceExhausted):
        if _NEVER_FITS in msg:
            return ApiError(400, msg, code="context_length_exceeded")
        return ApiError(429, msg, type="rate_limit_error", code="over_capacity")
    if isinstance(err, sdk.Unavailable):
        return ApiError(503, msg, type="service_unavailable", code="unavailable")
    if isinstance(err, sdk.DeadlineExceeded):
        return ApiError(504, msg, type="timeout", code="timeout")
    if isinstance(err, sdk.Cancelled):
        return ApiError(499, msg, type="cancelled", code="cancelled")
    return ApiError(500, msg, type="server_error", code="internal")
