"""The scheduler's errors, raised by the core, the frontend and the conversation table.

Each class names one outcome for the caller and carries a short message that says why; the
servicer maps each class to one gRPC status code, in one place (``servicer.status_for``). A builtin
exception that escapes (a stray ``KeyError``, say) is a bug and is never dressed up as one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SchedulerError(Exception):
    """Base of every error the scheduler raises on a caller's request; nothing changed."""


class InvalidArgument(SchedulerError):
    """The request is malformed whatever the scheduler's state (-> INVALID_ARGUMENT)."""


class NotFound(SchedulerError):
    """A named request or conversation does not exist, or is not the caller's (-> NOT_FOUND)."""


class ResourceExhausted(SchedulerError):
    """The request can never fit, or a queue or table is full (-> RESOURCE_EXHAUSTED)."""


class Unavailable(SchedulerError):
    """No worker has joined yet, or the scheduler is shutting down, also for a request already
    streaming (-> UNAVAILABLE)."""


class FailedPrecondition(SchedulerError):
    """The scheduler's state forbids it now: a turn in progress, another block size
    (-> FAILED_PRECONDITION)."""


class Aborted(SchedulerError):
    """An internal failure ended the call; the message says which (-> ABORTED). Never
    CANCELLED: that code is kept for a client's own cancel."""


class PermissionDenied(SchedulerError):
    """The caller's API key may not act for the tenant it named (-> PERMISSION_DENIED)."""


class AlreadyExists(SchedulerError):
    """A worker of that id has already joined (-> ALREADY_EXISTS)."""


@contextmanager
def invalid_argument() -> Iterator[None]:
    """Turns the ``ValueError`` of a ground helper (validation, tokenizer) into InvalidArgument."""
    try:
        yield
    except ValueError as err:
        raise InvalidArgument(str(err)) from err
