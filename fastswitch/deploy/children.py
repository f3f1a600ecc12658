"""Child processes of a deployment: start one, watch it exit, read its log, stop a group of them,
and sweep the shared memory a killed one left behind."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fastswitch.deploy.config import DeploymentError
from fastswitch.deploy.flags import ChildSpec, CommandBuilder
from servekit.parent import PARENT_ENV, RUN_DIR_ENV

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 30


@dataclass(slots=True)
class Child:
    """One running (or exited) service process, the handle a caller may signal.

    Owns its pidfd (closed by :meth:`close`); the Deployment that spawned it reaps it on stop.
    """

    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    pidfd: int | None = None
    log_offset: int = 0  # where this run's part of an appended log starts

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL this process (not its group): a crash, as a test or an operator provokes it.
        The owning Deployment still reaps it and sweeps what it left."""
        send_signal(self.proc.pid, signal.SIGKILL, group=False)

    async def wait_exit(self) -> int:
        """Returns the exit code once the process exits (pidfd readiness; a poll without one)."""
        if self.pidfd is None:
            while self.proc.poll() is None:
                await asyncio.sleep(0.1)
            return self.proc.wait()
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(self.pidfd, readable)
        try:
            if self.proc.poll() is None:
                await exited
        finally:
            loop.remove_reader(self.pidfd)
        return self.proc.wait()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self.log_path is None:
            return f"(output of {self.spec.name} went to stderr)"
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return f"(no log for {self.spec.name})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.spec.name}'s log ---\n{tail or '(empty)'}"

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def spawn(
    spec: ChildSpec,
    command: CommandBuilder,
    log_path: Path | None,
    deployment_id: str,
    run_dir: Path,
) -> Child:
    """Starts one child in its own process group, its output appended to `log_path` after a
    header line naming the deployment (None: to this stderr). The child is told this process's
    pid (``FASTSWITCH_PARENT_PID``) and the deployment's `run_dir` (``FASTSWITCH_PARENT_RUN_DIR``):
    when this process dies it stops in order and removes that dir (``servekit/parent.py``).

    DeploymentError when the command cannot be executed.
    """
    cmd = command(spec.service, spec.flags)
    # The child stops when we die, and takes the runtime dir with it.
    env = {**os.environ, PARENT_ENV: str(os.getpid()), RUN_DIR_ENV: str(run_dir)}
    offset = 0
    try:
        if log_path is None:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=2, process_group=0, env=env
            )
        else:
            with open(log_path, "ab") as out:
                stamp = datetime.now(UTC).isoformat(timespec="seconds")
                out.write(f"=== {spec.name} of deployment {deployment_id}, {stamp} ===\n".encode())
                out.flush()
                offset = out.tell()
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, process_group=0, env=env
                )
    except OSError as err:
        raise DeploymentError(f"cannot start {spec.name} ({cmd[0]}): {err}") from err
    return Child(spec, proc, log_path, _pidfd(proc.pid), offset)


def terminate(children: list[Child], timeout_s: float) -> None:
    """SIGTERM all of `children`, wait up to timeout_s, then SIGKILL their groups; reap."""
    for child in children:
        if child.alive():
            send_signal(child.proc.pid, signal.SIGTERM, group=False)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            send_signal(child.proc.pid, signal.SIGKILL, group=True)
            child.proc.wait()


def sweep_shared_memory(deployment_id: str) -> None:
    """Removes this deployment's shared-memory files that a killed child could not remove
    (a clean shutdown leaves none; the deployment id is ours alone)."""
    for path in Path("/dev/shm").glob(f"fastswitch-{deployment_id}-*"):
        log.warning("removing a shared-memory file left by a killed child: %s", path.name)
        path.unlink(missing_ok=True)


def send_signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)  # the child leads its own process group (process_group=0)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone; wait() reaps it


def _pidfd(pid: int) -> int | None:
    open_pidfd = getattr(os, "pidfd_open", None)
    if open_pidfd is None:
        return None
    try:
        return int(open_pidfd(pid))
    except OSError:  # kernel without pidfd (Linux < 5.3): wait_exit falls back to polling
        return None
