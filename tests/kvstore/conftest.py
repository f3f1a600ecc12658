"""Fixtures of the KV store tests; the factories live in ``kvstore_factories``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kvstore_factories import FakeClock

from servekit import shm


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def shm_name() -> Iterator[Callable[[], str]]:
    """Fresh ``fastswitch-test-...`` names; whatever is left under them is removed afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"fastswitch-test-{uuid.uuid4().hex[:12]}")
        return made[-1]

    yield make
    for name in made:
        shm.remove_stale(name)
