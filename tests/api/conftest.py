"""Real deployments with the HTTP door, started through the launcher (as ``fastswitch up``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastswitch.deploy import Deployment


def _up(**settings: object) -> Iterator[Deployment]:
    dep = Deployment(model="tiny", workers=1, port=0, http_port=0, device_kv_blocks=160, **settings)
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []
    assert not list(Path("/dev/shm").glob(f"fastswitch-{dep.deployment_id}-*"))


@pytest.fixture(scope="module")
def door() -> Iterator[Deployment]:
    """Chat completions retained for the next turn (the door's default)."""
    yield from _up()


@pytest.fixture(scope="module")
def door_no_reuse() -> Iterator[Deployment]:
    """Nothing retained: every turn prefills its whole history."""
    yield from _up(retain=False, extra_api_args=("--no-chat-retain",))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Keys on (alice, bob), one request in flight at most, a long drain."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("sk-alice-0000 alice\nsk-bob-00000 bob\n")
    yield from _up(api_keys=keys, extra_api_args=("--max-in-flight", "1", "--drain-s", "20"))


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Keys on both doors: alice, bob (priority class 2) and an operator; the launcher adds
    the door's service key and its own admin key."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(
        "sk-alice-0000 alice\nsk-bob-00000 bob priority=2\nsk-ops-00000 ops role=admin\n"
    )
    yield from _up(api_keys=keys)
