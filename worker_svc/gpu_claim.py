"""``--device cuda:auto``: a worker claims the first GPU no other worker of its deployment holds.

Compose starts every replica of a service with the same settings and the same devices, so the
replicas of one GPU worker service cannot be told apart by a device id. Each is handed every GPU
instead, and each claims one: GPU ``i`` is held by whoever holds an exclusive ``flock`` on
``<dir>/fastswitch-<deployment>-cuda-<i>.lock``. ``dir`` is ``/dev/shm``, which the workers of a
compose stack share (they run in the KV store's IPC namespace); on one host outside containers
it is the host's.

Invariants:

* At most one live claim per (directory, deployment, GPU): the lock is exclusive and taken
  without waiting (``LOCK_NB``); a held GPU is skipped, never waited for.
* A claim ends with its process: the kernel drops a ``flock`` when the last descriptor of the
  open file closes, so a killed worker frees its GPU for the next one without any cleanup.
* No lock file outlives its claim: :meth:`GpuClaim.release` unlinks the file while still holding
  the lock. A claimer that opened the file before the unlink and then got the lock holds it on
  an inode that no longer has the name; it sees so (the name's inode differs from its
  descriptor's) and tries again, so two live claims never split across two inodes of one name.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from servekit import shm

log = logging.getLogger(__name__)

AUTO = "cuda:auto"
_RETRIES = 8  # per GPU: races with a concurrent release (see the module docstring)


def lock_path(directory: Path, deployment_id: str, index: int) -> Path:
    """The lock file of GPU ``index`` (its name checked like every ``fastswitch-`` file)."""
    name = f"{shm.PREFIX}{deployment_id}-cuda-{index}.lock"
    shm.check_name(name)
    return directory / name


class GpuClaim:
    """GPU ``index``, held through the open, locked descriptor ``fd`` on ``path``.

    The owner keeps it for its whole life and calls :meth:`release` at shutdown (also safe to
    call twice; the process's exit releases it too)."""

    __slots__ = ("_fd", "index", "path")

    def __init__(self, index: int, path: Path, fd: int) -> None:
        self.index = index
        self.path = path
        self._fd: int | None = fd

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlinks the lock file, then closes the descriptor (which drops the lock)."""
        if self._fd is None:
            return
        try:
            if _same_file(self.path, self._fd):
                self.path.unlink()
        except OSError as err:
            log.warning(
                "cannot remove the GPU lock file", extra={"path": str(self.path), "why": str(err)}
            )
        finally:
            os.close(self._fd)
            self._fd = None


def claim_gpu(device_count: int, deployment_id: str, directory: Path = shm.SHM_DIR) -> GpuClaim:
    """Claims the lowest-numbered GPU in ``range(device_count)`` that no live claim holds.

    ``ValueError`` (one line) when there is no GPU or every one is held."""
    if device_count <= 0:
        raise ValueError(f"--device {AUTO}: no CUDA device is available")
    for index in range(device_count):
        claim = _try_claim(lock_path(directory, deployment_id, index), index)
        if claim is not None:
            log.info("claimed a GPU", extra={"device": claim.device, "lock": str(claim.path)})
            return claim
    raise ValueError(
        f"--device {AUTO}: all {device_count} GPUs are held by other workers of deployment "
        f"{deployment_id!r} (lock files {lock_path(directory, deployment_id, 0).name} ... in "
        f"{directory}); start at most one worker per GPU"
    )


def _try_claim(path: Path, index: int) -> GpuClaim | None:
    for _ in range(_RETRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None  # held by a live claim
            raise
        if _same_file(path, fd):
            return GpuClaim(index, path, fd)
        os.close(fd)  # locked an inode that a release just unlinked: try the name again
    return None


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
