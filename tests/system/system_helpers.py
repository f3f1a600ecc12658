"""Plain helpers of the whole-system tests (no fixtures)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def fastswitch_shm_files(deployment_id: str) -> set[str]:
    """This deployment's shared-memory files (other runs on the machine are not ours)."""
    return {p.name for p in Path("/dev/shm").glob(f"fastswitch-{deployment_id}-*")}


def child_pids_of(pid: int) -> list[int]:
    """Direct children of `pid` still alive (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def is_running(pid: int) -> bool:
    """`pid` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until_up(launcher: subprocess.Popen[str]) -> None:
    """Reads `fastswitch up`'s output until it says the deployment is up (fails if it exits)."""
    assert launcher.stdout is not None
    for line in launcher.stdout:
        if line.startswith("FastSwitch is up"):
            return
    pytest.fail(f"fastswitch up did not come up (code {launcher.wait()})")
