"""scripts/setup.sh's torch choices, read from its --dry-run output (nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"
TORCH_INDEX = "https://download.pytorch.org/whl/"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SETUP)], check=False).returncode == 0


def test_the_default_reaches_no_pytorch_index():
    done = _dry_run()
    assert done.returncode == 0, done.stderr
    assert TORCH_INDEX not in done.stdout


@pytest.mark.parametrize(("args", "index"), [(["--cpu"], "cpu"), (["--cuda", "12.8"], "cu128")])
def test_a_torch_choice_installs_only_torch_from_its_index(args, index):
    done = _dry_run(*args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    torch = [line for line in lines if "torch==" in line]
    assert len(torch) == 1 and torch[0].endswith(f"--index-url {TORCH_INDEX}{index}")
    project = [line for line in lines if " -e " in line]
    assert len(project) == 1 and "--index-url" not in project[0]
    assert lines.index(torch[0]) < lines.index(project[0])  # torch first: the pin is then met


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cuda"], "needs a version"),
        (["--cuda", "12"], "MAJOR.MINOR"),
        (["--gpu"], "unknown option"),
    ],
)
def test_bad_options_exit_2_with_a_message(args, message):
    done = _dry_run(*args)
    assert done.returncode == 2 and message in done.stderr
