"""servekit.parent.remove_run_dir: a child of a dead launcher removes the launcher's runtime
dir, and nothing else whatever the environment names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servekit.parent import RUN_DIR_ENV, remove_run_dir


def _run_dir(parent: Path, name: str) -> Path:
    d = parent / name
    d.mkdir()
    (d / "scheduler.log").write_text("log")
    (d / "keys.txt").write_text("k t")
    return d


def test_the_launchers_runtime_dir_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    d = _run_dir(tmp_path, "fastswitch-abc123")
    monkeypatch.setenv(RUN_DIR_ENV, str(d))
    remove_run_dir()
    assert not d.exists()
    remove_run_dir()  # a sibling got there first: no error


@pytest.mark.parametrize("name", ["data", "not-fastswitch-x"])
def test_a_dir_not_named_as_the_launcher_names_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    d = _run_dir(tmp_path, name)
    monkeypatch.setenv(RUN_DIR_ENV, str(d))
    remove_run_dir()
    assert (d / "keys.txt").exists()


def test_a_relative_path_or_a_symlink_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = _run_dir(tmp_path, "precious")
    link = tmp_path / "fastswitch-link"
    link.symlink_to(target)
    monkeypatch.setenv(RUN_DIR_ENV, str(link))
    remove_run_dir()
    assert (target / "keys.txt").exists() and link.is_symlink()
    monkeypatch.chdir(tmp_path)
    rel = _run_dir(tmp_path, "fastswitch-rel")
    monkeypatch.setenv(RUN_DIR_ENV, os.path.relpath(rel, tmp_path))
    remove_run_dir()
    assert rel.exists()
