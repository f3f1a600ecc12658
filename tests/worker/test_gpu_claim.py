"""``--device cuda:auto``: GPU claims through flock'ed lock files, with the device count injected
(no CUDA needed): lowest free GPU first, held GPUs skipped, freed on release and on the holder's
death, no lock file left behind, and a release racing a claim never yields two holders."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker_svc import gpu_claim, server
from worker_svc.gpu_claim import claim_gpu, lock_path

DEPLOYMENT = "claimtest"


def test_claims_take_the_lowest_free_gpu_and_refuse_when_all_are_held(tmp_path: Path) -> None:
    claims = [claim_gpu(3, DEPLOYMENT, tmp_path) for _ in range(3)]
    try:
        assert [c.device for c in claims] == ["cuda:0", "cuda:1", "cuda:2"]
        with pytest.raises(ValueError, match=r"all 3 GPUs are held .* 'claimtest'"):
            claim_gpu(3, DEPLOYMENT, tmp_path)
        # Another deployment's workers claim independently.
        other = claim_gpu(3, "other", tmp_path)
        assert other.device == "cuda:0"
        other.release()
    finally:
        for c in claims:
            c.release()


def test_release_frees_the_gpu_and_removes_its_lock_file(tmp_path: Path) -> None:
    first, second = claim_gpu(2, DEPLOYMENT, tmp_path), claim_gpu(2, DEPLOYMENT, tmp_path)
    first.release()
    first.release()  # idempotent
    assert not first.held and not lock_path(tmp_path, DEPLOYMENT, 0).exists()
    again = claim_gpu(2, DEPLOYMENT, tmp_path)
    assert again.device == "cuda:0"
    again.release()
    second.release()
    assert list(tmp_path.iterdir()) == []


def test_no_gpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no CUDA device is available"):
        claim_gpu(0, DEPLOYMENT, tmp_path)


_HOLDER = """
import sys
from pathlib import Path
from worker_svc.gpu_claim import claim_gpu
claim = claim_gpu(2, sys.argv[1], Path(sys.argv[2]))
print(claim.device, flush=True)
sys.stdin.read()
"""


def test_a_killed_holder_frees_its_gpu(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, DEPLOYMENT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "cuda:0"
        mine = claim_gpu(2, DEPLOYMENT, tmp_path)
        assert mine.device == "cuda:1"  # GPU 0 is the other process's
        mine.release()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()
    # Its lock file is still there (nobody removed it), but nobody holds the lock any more.
    assert lock_path(tmp_path, DEPLOYMENT, 0).exists()
    claim = claim_gpu(2, DEPLOYMENT, tmp_path)
    assert claim.device == "cuda:0"
    claim.release()
    assert list(tmp_path.iterdir()) == []


def test_a_release_between_open_and_lock_makes_the_claimer_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claimer opened the name, then its holder released (unlinked) before the claimer's
    flock: the lock it gets is on a nameless inode, so it must open the name again. Otherwise
    a third worker would create a fresh file and take the same GPU."""
    path = lock_path(tmp_path, DEPLOYMENT, 0)
    real_flock = fcntl.flock
    calls = []

    def racing_flock(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            path.unlink()  # what GpuClaim.release of the previous holder does
        real_flock(fd, op)

    monkeypatch.setattr(gpu_claim.fcntl, "flock", racing_flock)
    claim = claim_gpu(1, DEPLOYMENT, tmp_path)
    monkeypatch.setattr(gpu_claim.fcntl, "flock", real_flock)
    try:
        assert len(calls) == 2 and claim.device == "cuda:0"
        assert path.exists(), "the claim must hold the lock on the file that has the name"
        with pytest.raises(ValueError, match="all 1 GPUs are held"):
            claim_gpu(1, DEPLOYMENT, tmp_path)
    finally:
        claim.release()


def test_lock_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shared-memory name"):
        lock_path(tmp_path, "bad/name", 0)
    assert lock_path(Path("/dev/shm"), "compose", 1) == Path(
        "/dev/shm/fastswitch-compose-cuda-1.lock"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would claim a real GPU")
def test_a_worker_without_cuda_exits_2_saying_why(capsys: pytest.CaptureFixture[str]) -> None:
    code = server.main(
        ["--scheduler", "127.0.0.1:1", "--device", "cuda:auto", "--log-level", "error"]
    )
    assert code == 2
    assert "--device cuda:auto: no CUDA device is available" in capsys.readouterr().err
