"""A launched child notices its launcher's death and stops as on SIGTERM.

The launcher (``fastswitch/deploy/children.py``) puts its pid in ``FASTSWITCH_PARENT_PID``.
The child opens a pidfd on that process and, on the event loop, waits for it to become
readable (the launcher exited, however: SIGKILL included); then it runs its ordinary stop, so
its shared-memory files go as after a SIGTERM. The parent may already be gone when the child
looks: the pidfd is opened first and ``getppid()`` compared afterwards, so that race ends in a
stop too.

The launcher also names its runtime directory (``FASTSWITCH_PARENT_RUN_DIR``: sockets, key
files, logs) which it removes on its own stop; when it died instead, each child removes that
directory as it exits, so nothing of the deployment outlives it (the first child to exit takes
it; its siblings' open logs and sockets are unlinked files until they exit too).

Why not ``PR_SET_PDEATHSIG``: it fires when the *thread* that forked the child exits, and the
launcher may start children from a helper thread (``deploy/bridge.py``, a supervisor thread),
so it would stop healthy children. Without pidfds (Linux < 5.3) ``getppid()`` is polled.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PARENT_ENV = "FASTSWITCH_PARENT_PID"
RUN_DIR_ENV = "FASTSWITCH_PARENT_RUN_DIR"
RUN_DIR_PREFIX = "fastswitch-"  # only a directory named so is ever removed (tempfile.mkdtemp)
_POLL_S = 0.5


def watch_parent(on_death: Callable[[], None]) -> Callable[[], None] | None:
    """Calls ``on_death()`` once, on the running loop, when the launcher named by
    ``FASTSWITCH_PARENT_PID`` exits (at once if it already has). Returns the function that
    undoes the watch, or None when no launcher is named (a service started by hand)."""
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return None
    parent = int(raw)
    loop = asyncio.get_running_loop()
    fired = False

    def fire() -> None:
        nonlocal fired
        if not fired:
            fired = True
            log.warning("the launcher is gone; stopping", extra={"launcher_pid": parent})
            atexit.register(remove_run_dir)
            on_death()

    pidfd = _open_pidfd(parent)
    if os.getppid() != parent:  # gone before we looked (or never ours)
        if pidfd is not None:
            os.close(pidfd)
        loop.call_soon(fire)
        return lambda: None
    if pidfd is not None:
        loop.add_reader(pidfd, fire)

        def undo() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)

        return undo

    async def poll() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(_POLL_S)
        fire()

    task = loop.create_task(poll(), name="parent-watch")

    def cancel() -> None:
        task.cancel()

    return cancel


def remove_run_dir() -> None:
    """Removes the dead launcher's runtime directory (``FASTSWITCH_PARENT_RUN_DIR``), if it is
    one: an absolute path to a directory of ours named ``fastswitch-*``. A sibling that exits
    at the same time may be removing it too, so what is already gone is no error."""
    raw = os.environ.get(RUN_DIR_ENV, "")
    path = Path(raw)
    if not raw or not path.is_absolute() or not path.name.startswith(RUN_DIR_PREFIX):
        return
    try:
        if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
            return
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)
    log.info("removed the launcher's runtime dir", extra={"run_dir": raw})


def _open_pidfd(pid: int) -> int | None:
    open_pidfd = getattr(os, "pidfd_open", None)
    if open_pidfd is None:
        return None
    try:
        return int(open_pidfd(pid))
    except OSError:  # no such process, or no pidfd support: the getppid check decides
        return None
