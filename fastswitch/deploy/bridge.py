"""Runs the launcher's asyncio start-up from plain blocking code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion from sync code, on a fresh loop in a helper thread when this
    thread already runs one (e.g. a Deployment used inside an async test)."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastswitch-launcher") as pool:
        return pool.submit(asyncio.run, main()).result()
