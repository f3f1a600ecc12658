"""The scheduler's context-switch settings from its flags: each is the mode's
(``mode_settings``) unless its own flag says otherwise, and swaps and retention need a store."""

from __future__ import annotations

import pytest

from scheduler_svc.config import CoreConfig
from scheduler_svc.server import build_parser, config_from_args

STORE = ("--kvstore", "unix:///tmp/kv.sock")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTSWITCH_MODE", "FASTSWITCH_PREEMPTION", "FASTSWITCH_KVSTORE"):
        monkeypatch.delenv(name, raising=False)


def core(*argv: str) -> CoreConfig:
    return config_from_args(build_parser().parse_args(list(argv))).core


def settings(c: CoreConfig) -> tuple[str, bool, bool, bool]:
    return (c.preemption, c.device_prefix_cache, c.kv_reuse, c.retain)


def test_each_mode_sets_its_defaults() -> None:
    assert settings(core(*STORE)) == ("swap", False, True, True)
    assert settings(core(*STORE, "--mode", "vllm-v1")) == ("recompute", True, False, False)
    assert settings(core(*STORE, "--mode", "vllm-baseline")) == ("swap", False, False, False)


def test_a_flag_overrides_its_part_of_the_mode() -> None:
    v1 = ("--mode", "vllm-v1", *STORE)
    assert not core(*v1, "--no-device-prefix-cache").device_prefix_cache
    assert settings(core(*v1, "--preemption", "swap")) == ("swap", True, False, False)
    assert core("--device-prefix-cache", *STORE).device_prefix_cache
    fs = core("--preemption", "recompute", *STORE)
    assert (fs.preemption, fs.retain) == ("recompute", False)  # retention needs swaps


def test_without_a_store_every_mode_recomputes_and_retains_nothing() -> None:
    for mode in ("fastswitch", "vllm-baseline"):
        assert settings(core("--mode", mode))[::3] == ("recompute", False)
    assert settings(core("--mode", "vllm-v1", "--preemption", "swap"))[:2] == ("recompute", True)
