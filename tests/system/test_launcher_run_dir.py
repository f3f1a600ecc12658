"""A SIGKILLed launcher leaves no runtime dir: its children remove it as they exit (the
launcher's own stop cannot run; docs/failures.md)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from polling import eventually_sync
from system_helpers import child_pids_of, is_running, wait_until_up

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_a_killed_launchers_runtime_dir_goes_with_its_children(tmp_path: Path):
    # The launcher makes its runtime dir in $TMPDIR: a short fresh one (Unix socket paths) shows
    # which dir is the deployment's.
    tmp = Path(tempfile.mkdtemp(prefix="fsrd-", dir="/tmp"))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "fastswitch", "up", "--port", "0", "--workers", "1", "--no-http",
         "--device-kv-blocks", "64", "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    try:
        wait_until_up(launcher)
        (run_dir,) = tmp.glob("fastswitch-*")
        assert any(run_dir.glob("*.sock"))  # the internal plane's sockets
        children = child_pids_of(launcher.pid)
        assert len(children) == 3  # store, scheduler, one worker
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        eventually_sync(
            lambda: not any(is_running(p) for p in children),
            what="every child exited after the launcher died",
            timeout_s=60,
        )
        assert not run_dir.exists()
        logs = [p.read_text() for p in (tmp_path / "logs").glob("*.log")]
        assert any("removed the launcher's runtime dir" in text for text in logs)  # the first out
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        shutil.rmtree(tmp, ignore_errors=True)
