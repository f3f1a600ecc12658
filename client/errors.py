"""Typed exceptions of the SDK, mapped from gRPC status codes in one place (:func:`from_rpc_error`).

The server's contract (``proto/scheduler.proto``) says which code means what::

    INVALID_ARGUMENT    -> InvalidArgument     bad prompt / sampling parameters
    NOT_FOUND           -> NotFound            unknown request or conversation id
    RESOURCE_EXHAUSTED  -> ResourceExhausted   the request can never fit
    UNAVAILABLE         -> Unavailable         no worker yet, shutting down, or nothing listening
    DEADLINE_EXCEEDED   -> DeadlineExceeded    the call's deadline (timeout_s) passed
    CANCELLED           -> Cancelled
    FAILED_PRECONDITION -> FailedPrecondition
    UNIMPLEMENTED       -> Unimplemented       a call this server does not serve (yet)
    ABORTED             -> InternalError       a server fault ended the call (message: which)
    UNAUTHENTICATED     -> Unauthenticated     keys are on and the call's api_key is missing/unknown
    PERMISSION_DENIED   -> PermissionDenied    the key may not act for the tenant named
    INTERNAL / UNKNOWN / DATA_LOSS -> InternalError
    anything else       -> FastSwitchError
"""

from __future__ import annotations

import grpc


class FastSwitchError(Exception):
    """Base of every error the SDK raises for a failed call.

    ``code`` is the gRPC status code, ``details`` the server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}" if details else code.name)
        self.code = code
        self.details = details


class InvalidArgument(FastSwitchError):
    """The server rejected the request's arguments (the message says which value)."""


class NotFound(FastSwitchError):
    """Unknown request or conversation id (or one that belongs to another tenant)."""


class ResourceExhausted(FastSwitchError):
    """The request can never fit (context or queue limits)."""


class Unavailable(FastSwitchError):
    """No server listening, no worker joined yet, or the service is shutting down."""


class DeadlineExceeded(FastSwitchError):
    """The call's deadline passed before it completed."""


class Cancelled(FastSwitchError):
    """The call was cancelled."""


class FailedPrecondition(FastSwitchError):
    """The system is not in a state that allows the call."""


class Unimplemented(FastSwitchError):
    """The server does not serve this call."""


class Unauthenticated(FastSwitchError):
    """The server has API keys and the client sent none, or one it does not know."""


class PermissionDenied(FastSwitchError):
    """The API key may not act for the tenant the call named (only its own or a narrowing)."""


class InternalError(FastSwitchError):
    """The server (or the SDK, for a malformed response) failed internally."""


_BY_CODE: dict[grpc.StatusCode, type[FastSwitchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.ABORTED: InternalError,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def error_for(code: grpc.StatusCode, details: str) -> FastSwitchError:
    """The typed exception for a status code."""
    return _BY_CODE.get(code, FastSwitchError)(code, details)


def from_rpc_error(err: grpc.RpcError) -> FastSwitchError:
    """Maps a failed gRPC call (``grpc.aio.AioRpcError`` or sync ``grpc.RpcError``) to its type."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details = details_fn() if callable(details_fn) else str(err)
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "")
