"""Fixtures of the KV store tests; the factories live in ``kvstore_factories``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from kvstore_factories import FakeClock, StoreFactory, make_store

from kvstore_svc.store import Store
from servekit import shm


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def new_store(clock: FakeClock) -> Iterator[StoreFactory]:
    """``make_store`` on the test's clock; every store made is integrity-checked afterwards."""
    made: list[Store] = []

    def make(num_blocks: int = 16, **kwargs: object) -> Store:
        made.append(make_store(num_blocks, clock=clock, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for store in made:
        store.check_integrity()


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
