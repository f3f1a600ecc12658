"""The store core's errors. The servicer maps each class to one gRPC status code, in one place."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store core raises on a caller's request; nothing changed."""


class InvalidArgument(StoreError):
    """The request is malformed whatever the store's state (-> INVALID_ARGUMENT)."""


class NotFound(StoreError):
    """A named lease, worker or committed block does not exist (any more) (-> NOT_FOUND)."""


class Exhausted(StoreError):
    """Not enough host blocks, even after evicting every evictable one (-> RESOURCE_EXHAUSTED)."""


class Precondition(StoreError):
    """The store's state forbids the request: e.g. another block size (-> FAILED_PRECONDITION)."""
