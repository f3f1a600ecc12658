"""The CPU worker's memcpy tuning (servekit/memcpy_tuning.py): the environment it asks for, and
a re-execution that keeps the arguments and sets the tunable once."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from servekit.memcpy_tuning import OPT_OUT, THRESHOLD, TUNABLE, tuned_env

X86_GLIBC = platform.machine().lower() in ("x86_64", "amd64") and platform.libc_ver()[0] == "glibc"
needs_x86_glibc = pytest.mark.skipif(not X86_GLIBC, reason="the tunable is x86 glibc's")


@needs_x86_glibc
def test_the_threshold_is_added_beside_other_tunables_and_never_twice():
    setting = f"{TUNABLE}={THRESHOLD:#x}"
    assert tuned_env({})["GLIBC_TUNABLES"] == setting
    other = "glibc.malloc.arena_max=2"
    assert tuned_env({"GLIBC_TUNABLES": other})["GLIBC_TUNABLES"] == f"{other}:{setting}"
    assert tuned_env({"GLIBC_TUNABLES": f"{TUNABLE}=0x4000"}) is None  # the user's own stays
    assert tuned_env({OPT_OUT: "0"}) is None


@needs_x86_glibc
def test_a_process_reexecutes_itself_with_the_tunable_and_its_arguments(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        "from servekit.memcpy_tuning import reexec_with_streaming_memcpy\n"
        "print('start', os.getpid(), flush=True)\n"
        "reexec_with_streaming_memcpy()\n"
        "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:], os.getpid())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    env["PYTHONPATH"] = os.getcwd()
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "x"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    starts = [line for line in out if line.startswith("start")]
    assert len(starts) == 2, out  # once as started, once re-executed: never a loop
    [last] = [line for line in out if line.startswith("tunables")]
    assert f"{TUNABLE}={THRESHOLD:#x}" in last and "['--flag', 'x']" in last
    assert last.split()[-1] == starts[0].split()[1]  # execve: the pid a supervisor holds stays
