"""Arena layout and the store's arena file: names, sizes, block views shared with a 'worker'."""

from __future__ import annotations

import logging
import stat
import uuid
from collections.abc import Iterator

import pytest
import torch

from kvstore_svc.arena import (
    ArenaLayout,
    HostArena,
    arena_bytes_for_gib,
    arena_name,
    check_deployment_id,
    map_arena,
)
from servekit import shm


@pytest.fixture
def deployment() -> Iterator[str]:
    deployment_id = f"test-{uuid.uuid4().hex[:10]}"
    yield deployment_id
    shm.remove_stale(arena_name(deployment_id))


def test_names_and_sizes() -> None:
    assert arena_name("prod-1") == "fastswitch-prod-1-arena"
    for bad in ("", "a/b", "../x", "-x", "x" * 129, "a b"):
        with pytest.raises(ValueError, match="deployment id"):
            check_deployment_id(bad)
    assert arena_bytes_for_gib(1.0) == 1 << 30
    assert arena_bytes_for_gib(1e-9) == 4096  # rounded up to a whole page
    for bad_gib in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="> 0"):
            arena_bytes_for_gib(bad_gib)


def test_layout_arithmetic() -> None:
    layout = ArenaLayout.fit(10 * 1000 + 999, 1000)
    assert layout == ArenaLayout(1000, 10)
    assert layout.used_bytes == 10_000
    assert layout.extent_bytes(3, 4) == (3000, 4000)
    with pytest.raises(ValueError, match="outside"):
        layout.extent_bytes(8, 3)
    with pytest.raises(ValueError, match="block_bytes"):
        ArenaLayout(0, 1)


def test_store_and_worker_share_blocks(deployment: str) -> None:
    arena = HostArena.create(deployment, 64 * 1024)
    try:
        assert stat.S_IMODE((shm.SHM_DIR / arena.name).stat().st_mode) == 0o600
        layout = ArenaLayout.fit(arena.size, 3000)  # not a divisor: the tail stays unused
        assert layout.num_blocks == 21
        worker_a = map_arena(arena.name, layout)
        worker_b = map_arena(arena.name, layout)
        assert worker_a.shape == (21, 3000) and worker_a.dtype == torch.uint8
        payload = torch.arange(2 * 3000, dtype=torch.int64).remainder(251).to(torch.uint8)
        worker_a[5:7].copy_(payload.view(2, 3000))  # one extent = one copy
        assert torch.equal(worker_b[5:7].flatten(), payload)
        offset, nbytes = layout.extent_bytes(5, 2)
        assert nbytes == payload.numel()
        with shm.open_existing(arena.name) as raw:
            assert bytes(raw.buf[offset : offset + 8]) == bytes(payload[:8].tolist())
        del worker_a, worker_b
    finally:
        arena.close()
    assert not (shm.SHM_DIR / arena_name(deployment)).exists()


def test_layout_larger_than_the_file_is_refused(deployment: str) -> None:
    arena = HostArena.create(deployment, 8192)
    try:
        with pytest.raises(ValueError, match="layout needs"):
            map_arena(arena.name, ArenaLayout(4096, 3))
    finally:
        arena.close()


def test_stale_arena_is_replaced(deployment: str, caplog: pytest.LogCaptureFixture) -> None:
    stale = shm.create(arena_name(deployment), 4096)
    stale.buf[0] = 0xAB
    stale.close()  # a crashed run: mapped no more, file still there
    with caplog.at_level(logging.WARNING, logger="kvstore_svc.arena"):
        arena = HostArena.create(deployment, 8192)
    try:
        assert any("stale" in r.getMessage() for r in caplog.records)
        assert arena.size == 8192
        with shm.open_existing(arena.name) as view:
            assert view.size == 8192 and view.buf[0] == 0
    finally:
        arena.close()
    arena.close()  # idempotent
    assert not (shm.SHM_DIR / arena.name).exists()
