"""Large copies at full speed on the CPU: glibc's threshold for non-temporal stores.

On x86, glibc's ``memcpy`` writes through the cache (read-for-ownership, then eviction) below
``glibc.cpu.x86_non_temporal_threshold`` and streams to memory above it. The default threshold is
about three quarters of the L3 cache share (tens of MiB), so a block-group swap of a few MiB per
copy on a CPU worker runs with cached stores at about 0.6 of a large copy's bandwidth, and evicts
the step's working set on the way. Measured here (AMD EPYC, 32 MiB L3), 512 MiB moved as 8 MiB
copies against one copy: 0.61 of the bandwidth by default, 1.01 with the threshold at 1 MiB.

The tunable is read once, when the process starts, so a process that wants it re-executes itself
with it set (``reexec_with_streaming_memcpy``), before it imports anything heavy. The pid stays
(``execv``), so a supervisor's handle on it holds. ``FASTSWITCH_GLIBC_TUNING=0`` opts out, and a
``GLIBC_TUNABLES`` that already sets the threshold is respected.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.cpu.x86_non_temporal_threshold"
THRESHOLD = 1 << 20  # copies of a block group and more stream; smaller ones stay cached
OPT_OUT = "FASTSWITCH_GLIBC_TUNING"


def tuned_env(env: dict[str, str]) -> dict[str, str] | None:
    """`env` with the threshold added to ``GLIBC_TUNABLES``; None when it needs no change (not
    x86 glibc, opted out, or already set)."""
    if env.get(OPT_OUT, "1") == "0":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or platform.libc_ver()[0] != "glibc":
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    setting = f"{TUNABLE}={THRESHOLD:#x}"
    return {**env, "GLIBC_TUNABLES": f"{current}:{setting}" if current else setting}


def reexec_with_streaming_memcpy() -> None:
    """Re-executes this interpreter with the same arguments and the tuned environment; returns
    only when nothing needs to change (as in the re-executed process: the tunable is set)."""
    env = tuned_env(dict(os.environ))
    if env is None:
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
