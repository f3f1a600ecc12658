"""servekit.shm: create / map / tensor round trip, mode, pre-fault, cleanup, stale files."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

from servekit import shm


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


def test_create_maps_zeroed_file_with_mode_0600(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        buf = shm.create(name, 3 * 4096 + 100)
    finally:
        os.umask(old_umask)
    with buf:
        st = os.stat(shm.SHM_DIR / name)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == buf.size == 3 * 4096 + 100
        assert st.st_blocks * 512 >= buf.size  # allocated up front, not sparse
        assert bytes(buf.buf[:16]) == bytes(16)
    assert not (shm.SHM_DIR / name).exists()
    assert buf.closed


def test_tensor_round_trip_between_two_mappings(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with shm.create(name, 1 << 16) as owner:
        reader = shm.open_existing(name)
        try:
            w = owner.as_tensor(torch.float32, (4, 8), offset=256)
            w.copy_(torch.arange(32, dtype=torch.float32).view(4, 8))
            r = reader.as_tensor(torch.float32, (4, 8), offset=256)
            assert torch.equal(r, w)
            r[0, 0] = -1.0  # writable, and shared
            assert w[0, 0].item() == -1.0
            assert bytes(owner.buf[256:260]) == torch.tensor([-1.0]).numpy().tobytes()
            del w, r
        finally:
            reader.close()


def test_view_seen_by_another_process(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with shm.create(name, 4096) as buf:
        code = (
            "import sys; from servekit import shm; b = shm.open_existing(sys.argv[1]);"
            "t = b.as_tensor(__import__('torch').int64, (2,)); t[1] = 42; del t; b.close()"
        )
        subprocess.run([sys.executable, "-c", code, name], check=True, timeout=60)
        t = buf.as_tensor(torch.int64, (2,))
        assert t.tolist() == [0, 42]
        del t


def test_close_refuses_while_a_tensor_is_alive(shm_name: Callable[[], str]) -> None:
    with shm.create(shm_name(), 4096) as buf:
        t = buf.as_tensor(torch.uint8, (4096,))
        with pytest.raises(BufferError, match="still alive"):
            buf.close()
        t[0] = 7  # the mapping is intact after the refused close
        assert buf.buf[0] == 7
        del t
        gc.collect()
        buf.close()
        buf.close()  # idempotent
        assert buf.closed


def test_as_tensor_bounds_and_alignment(shm_name: Callable[[], str]) -> None:
    with shm.create(shm_name(), 4096) as buf:
        with pytest.raises(ValueError, match="exceeds"):
            buf.as_tensor(torch.uint8, (4097,))
        with pytest.raises(ValueError, match="multiple of 4"):
            buf.as_tensor(torch.float32, (2,), offset=2)
        assert buf.as_tensor(torch.float32, (0,)).numel() == 0


def test_create_refuses_existing_until_stale_file_removed(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    (shm.SHM_DIR / name).write_bytes(b"left by a crashed run")
    with pytest.raises(FileExistsError):
        shm.create(name, 4096)
    assert (shm.SHM_DIR / name).read_bytes() == b"left by a crashed run"  # untouched
    assert shm.remove_stale(name) is True
    assert shm.remove_stale(name) is False
    with shm.create(name, 4096) as buf:
        assert bytes(buf.buf[:4]) == bytes(4)
    assert not (shm.SHM_DIR / name).exists()


def test_unlink_keeps_existing_mappings(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    buf = shm.create(name, 4096)
    buf.buf[0] = 9
    buf.unlink()
    assert not (shm.SHM_DIR / name).exists()
    assert buf.buf[0] == 9
    buf.unlink()  # already gone: fine
    buf.close()
    with pytest.raises(FileNotFoundError):
        shm.open_existing(name)


@pytest.mark.parametrize(
    "name", ["other-name", "fastswitch-../etc", "fastswitch-a/b", "fastswitch-" + "x" * 250]
)
def test_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="must start with"):
        shm.create(name, 4096)


def test_bad_size_leaves_nothing(shm_name: Callable[[], str]) -> None:
    name = shm_name()
    with pytest.raises(ValueError, match="> 0"):
        shm.create(name, 0)
    assert not (shm.SHM_DIR / name).exists()


def test_without_prefault_is_sparse(shm_name: Callable[[], str]) -> None:
    with shm.create(shm_name(), 1 << 20, prefault=False) as buf:
        assert os.stat(buf.path).st_blocks * 512 < buf.size
