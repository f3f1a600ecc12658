"""Bounded polling for tests: wait until a condition holds, or fail saying what was awaited.

Importable from every test folder (``pythonpath = ["tests"]`` in pyproject.toml)::

    from polling import eventually, eventually_sync

    await eventually(lambda: len(fake.cancelled) == 3, what="the server saw every cancel")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEFAULT_TIMEOUT_S = 10.0


def _fail(what: str, timeout_s: float) -> AssertionError:
    return AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def eventually(
    cond: Callable[[], object],
    *,
    what: str = "the condition",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.01,
) -> None:
    """Poll ``cond()`` on the running loop until it is truthy; AssertionError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= deadline:
            raise _fail(what, timeout_s)
        await asyncio.sleep(interval_s)


def eventually_sync(
    cond: Callable[[], object],
    *,
    what: str = "the condition",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = 0.01,
) -> None:
    """The same for code outside an event loop (a thread, a sync test)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() >= deadline:
            raise _fail(what, timeout_s)
        time.sleep(interval_s)
