"""Plain helpers of the whole-system tests (no fixtures)."""

from __future__ import annotations

from pathlib import Path


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
