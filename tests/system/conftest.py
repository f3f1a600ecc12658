"""Whole-system fixtures: real processes (KV store, workers, scheduler) started through the
launcher, which waits on gRPC health and on the workers joining — never on sleep."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from system_helpers import fastswitch_shm_files

from fastswitch.deploy import Deployment


@pytest.fixture(scope="module")
def two_workers() -> Iterator[Deployment]:
    dep = Deployment(model="tiny", workers=2, port=0, device_kv_blocks=96, policy="fcfs")
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []
    left = fastswitch_shm_files(dep.deployment_id)
    assert not left, f"shared-memory files outlived the deployment: {left}"


@pytest.fixture
def my_pid() -> int:
    return os.getpid()
