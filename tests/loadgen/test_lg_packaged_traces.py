"""The request traces shipped inside the load generator: unchanged copies (sha256), declared as
package data, and found by every trace workload from any working directory."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from client.loadgen.cli import main
from client.loadgen.traces import PACKAGED_TRACES, TRACE_FILES, default_trace
from client.loadgen.workloads import WorkloadSpec, build_workload

REPO = Path(__file__).resolve().parents[2]
SHA256 = {  # the sums of the public originals (traces_data/README.md)
    "AzureLLMInferenceTrace_conv.csv": (
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"
    ),
    "AzureLLMInferenceTrace_code.csv": (
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"
    ),
    "mooncake/synthetic_trace.jsonl": (
        "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131"
    ),
}


def _packaged(name: str) -> Path:
    path = PACKAGED_TRACES / name
    if not path.is_file():
        pytest.skip(f"{path} is not in this copy of the project")
    return path


@pytest.mark.parametrize("name", sorted(SHA256))
def test_packaged_trace_is_the_unchanged_original(name):
    digest = hashlib.sha256(_packaged(name).read_bytes()).hexdigest()
    assert digest == SHA256[name]


def test_every_workload_trace_has_a_sum_and_the_readme_lists_them():
    assert sorted(TRACE_FILES.values()) == sorted(SHA256)
    readme = (PACKAGED_TRACES / "README.md").read_text()
    listed = dict(
        (name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)
    )
    assert listed == SHA256


def test_traces_are_declared_package_data():
    pyproject = REPO / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml is not beside the tests (an installed copy)")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    globs = patterns["client.loadgen"]
    for name in [*TRACE_FILES.values(), "README.md"]:
        assert any(fnmatch.fnmatch(f"traces_data/{name}", g) for g in globs), name


@pytest.mark.parametrize("workload", sorted(TRACE_FILES))
def test_trace_workload_builds_from_the_packaged_copy_elsewhere(workload, monkeypatch, tmp_path):
    packaged = _packaged(TRACE_FILES[workload]).resolve()
    monkeypatch.delenv("FASTSWITCH_TRACE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing here: only the package's own copy can be found
    assert default_trace(workload) == packaged
    w = build_workload(WorkloadSpec(workload, duration_s=20, max_requests=12))
    assert len(w.sessions) == 12
    assert any(packaged.name in note for note in w.notes)
    assert all(s.turns[0].message and s.turns[0].max_tokens >= 1 for s in w.sessions)


def test_a_trace_workload_runs_without_trace(lg_fake, monkeypatch, tmp_path, capsys):
    addr, fake = lg_fake
    monkeypatch.delenv("FASTSWITCH_TRACE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    _packaged(TRACE_FILES["azure-code"])
    args = ["--target", addr, "--workload", "azure-code", "--duration", "2", "--max-requests"]
    rc = main([*args, "3", "--max-output-tokens", "4", "--warmup", "0", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert fake.finished == 3
    assert "AzureLLMInferenceTrace_code.csv" in capsys.readouterr().out
