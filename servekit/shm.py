"""Shared-memory files under ``/dev/shm``, mapped once and viewed as tensors without copies.

Used by the KV store (the host arena) and by workers (mapping the arena, sharing a CPU device
pool). Every file FastSwitch creates is named ``fastswitch-...`` so that a leak is visible with
``ls /dev/shm``; :func:`create` refuses any other name.

Life cycle and ownership::

    creator (store)                               reader (worker)
    buf = create(name, size)   O_EXCL, 0600,      buf = open_existing(name)
                               pre-faulted
    t = buf.as_tensor(...)  ──── same pages ────  t = buf.as_tensor(...)
    del t                                         del t
    buf.close()                unmaps             buf.close()
    buf.unlink()               removes the name; pages go when the last mapping closes

Views hold the mapping open. Every view handed out (``buf.buf`` slices, :meth:`as_tensor`)
is an export of the mmap, so :meth:`SharedBuffer.close` raises ``BufferError`` and changes
nothing while any of them is alive: drop the tensors first, then close. (``torch.frombuffer``
directly over an mmap would *not* hold an export, and closing would unmap memory under a live
tensor; :meth:`as_tensor` goes through a memoryview for exactly this reason.)

Pre-faulting: a fresh shared-memory page costs a page fault plus zeroing on its first write
(~0.3-0.4 GB/s against ~10 GB/s when faulted). :func:`create` allocates every page
(``posix_fallocate``, which also turns a full ``/dev/shm`` into ``OSError(ENOSPC)`` now instead
of ``SIGBUS`` later) and maps with ``MAP_POPULATE`` so this process's page tables are filled.
:func:`open_existing` populates too: the pages exist, but a new process still faults each one.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "fastswitch-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_NAME = 255


def check_name(name: str) -> None:
    """``ValueError`` unless ``name`` is a plain ``fastswitch-`` file name (no path, <= 255)."""
    if not name.startswith(PREFIX) or not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise ValueError(
            f"shared-memory name {name!r} must start with {PREFIX!r}, use only "
            f"[A-Za-z0-9._-] and be at most {_MAX_NAME} characters"
        )


def capacity_bytes(directory: Path = SHM_DIR) -> int:
    """The size of the file system of ``directory`` (``/dev/shm``: its tmpfs size, which in a
    container is the container's ``shm_size``), used or not."""
    st = os.statvfs(directory)
    return st.f_blocks * st.f_frsize


def shm_path(name: str) -> Path:
    """Path of the shared-memory file ``name`` (validated)."""
    check_name(name)
    return SHM_DIR / name


class SharedBuffer:
    """One mapped shared-memory file: ``name``, ``size`` (bytes), ``buf`` (a memoryview).

    Built by :func:`create` (``owner=True``) or :func:`open_existing` (``owner=False``). As a
    context manager it closes on exit and, when it is the owner, also unlinks. The mapping is
    read-write and shared: writes are seen by every process that maps the same file.
    """

    __slots__ = ("_mmap", "_owner", "_view", "name", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap, *, owner: bool) -> None:
        self.name = name
        self.size = size
        self._mmap: mmap.mmap | None = mapping
        self._view: memoryview | None = memoryview(mapping)
        self._owner = owner

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    @property
    def closed(self) -> bool:
        return self._mmap is None

    @property
    def buf(self) -> memoryview:
        """The whole mapping as a writable byte memoryview (valid until :meth:`close`)."""
        if self._view is None:
            raise ValueError(f"shared buffer {self.name} is closed")
        return self._view

    def as_tensor(
        self, dtype: torch.dtype, shape: tuple[int, ...] | torch.Size, offset: int = 0
    ) -> torch.Tensor:
        """A writable tensor over ``[offset, offset + numel * itemsize)`` of the mapping; no copy.

        ``offset`` must be a multiple of the dtype's size. The tensor keeps the mapping open:
        :meth:`close` raises ``BufferError`` until it (and every view of it) is gone.
        """
        import torch  # on first use: processes that only own files (the store) never load it

        itemsize = dtype.itemsize
        numel = 1
        for dim in shape:
            if dim < 0:
                raise ValueError(f"negative dimension in shape {tuple(shape)}")
            numel *= dim
        nbytes = numel * itemsize
        if offset < 0 or offset % itemsize:
            raise ValueError(f"offset {offset} is not a non-negative multiple of {itemsize}")
        if offset + nbytes > self.size:
            raise ValueError(
                f"view of {nbytes} bytes at offset {offset} exceeds {self.name} ({self.size} bytes)"
            )
        if nbytes == 0:
            return torch.empty(tuple(shape), dtype=dtype)
        flat = torch.frombuffer(self.buf[offset : offset + nbytes], dtype=dtype)
        return flat.view(tuple(shape))

    def close(self) -> None:
        """Unmaps. Idempotent. ``BufferError`` (nothing changes) while views are still alive."""
        if self._mmap is None:
            return
        assert self._view is not None
        try:
            self._view.release()
            self._mmap.close()
        except BufferError as err:
            self._view = memoryview(self._mmap)
            raise BufferError(
                f"cannot close shared buffer {self.name}: tensors or memoryviews over it are "
                "still alive; drop them first"
            ) from err
        self._mmap = None
        self._view = None

    def unlink(self) -> None:
        """Removes the file name (already gone is fine). Existing mappings stay valid."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            log.debug("shared-memory file already removed", extra={"shm": self.name})

    def __enter__(self) -> SharedBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        finally:
            if self._owner:
                self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"SharedBuffer({self.name!r}, size={self.size}, {state})"


def create(name: str, size: int, *, prefault: bool = True) -> SharedBuffer:
    """Creates and maps ``/dev/shm/<name>`` (mode 0600, ``size`` bytes, zero-filled).

    ``FileExistsError`` when the name is taken (a live peer, or a stale file left by a crash:
    the caller decides, see :func:`remove_stale`). With ``prefault`` every page is allocated
    and mapped now (see the module docstring); ``OSError(ENOSPC)`` when ``/dev/shm`` is too
    small. On any failure the file is removed again.
    """
    if size <= 0:
        raise ValueError(f"shared-memory size must be > 0, got {size}")
    path = shm_path(name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only have removed bits; make the mode exact
        if prefault:
            _fallocate(fd, size)
        else:
            os.ftruncate(fd, size)
        mapping = _map(fd, size, populate=prefault)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return SharedBuffer(name, size, mapping, owner=True)


def open_existing(name: str, *, populate: bool = True) -> SharedBuffer:
    """Maps an existing ``/dev/shm/<name>`` read-write, whole. ``FileNotFoundError`` if absent.

    ``populate`` fills this process's page tables now, so its first copies run at full speed.
    """
    path = shm_path(name)
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"shared-memory file {name} is empty")
        mapping = _map(fd, size, populate=populate)
    finally:
        os.close(fd)
    return SharedBuffer(name, size, mapping, owner=False)


def remove_stale(name: str) -> bool:
    """Removes ``/dev/shm/<name>`` if present (a crashed run's leftover); True when removed.

    Only call it for a name this process is about to own: a live peer's mappings stay valid,
    but the name would then point at the new file.
    """
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        return False
    return True


def _fallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a filesystem without fallocate: pages come from the touch below


def _map(fd: int, size: int, *, populate: bool) -> mmap.mmap:
    populate_flag = getattr(mmap, "MAP_POPULATE", 0) if populate else 0
    mapping = mmap.mmap(
        fd, size, flags=mmap.MAP_SHARED | populate_flag, prot=mmap.PROT_READ | mmap.PROT_WRITE
    )
    if populate and not populate_flag:
        _touch_pages(mapping, size)
    return mapping


def _touch_pages(mapping: mmap.mmap, size: int) -> None:
    """Reads one byte per page: maps every page (writable, as the mapping is shared)."""
    view = memoryview(mapping)
    try:
        touched = sum(view[offset] for offset in range(0, size, mmap.PAGESIZE))
    finally:
        view.release()
    log.debug("pages touched", extra={"bytes": size, "checksum": touched})
