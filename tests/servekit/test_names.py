"""The one meaning of each mode (``servekit.names.mode_settings``) and the parse of its name."""

from __future__ import annotations

import pytest

from servekit.names import MODES, Mode, Preemption, SwapLayout, mode_settings, parse_mode


def test_every_mode_has_its_settings() -> None:
    assert MODES == ("fastswitch", "vllm-v1", "vllm-baseline")
    table = {
        m: (s.preemption, s.device_prefix_cache, s.kv_reuse, s.retain, s.swap_layout, s.swap_sync)
        for m in MODES
        for s in [mode_settings(m)]
    }
    assert table == {
        "fastswitch": (Preemption.SWAP, False, True, True, SwapLayout.GROUP, False),
        "vllm-v1": (Preemption.RECOMPUTE, True, False, False, SwapLayout.PER_LAYER, True),
        "vllm-baseline": (Preemption.SWAP, False, False, False, SwapLayout.PER_LAYER, True),
    }


def test_a_mode_is_parsed_by_name_and_an_unknown_one_names_the_choices() -> None:
    assert parse_mode("vllm-v1") is Mode.VLLM_V1
    with pytest.raises(ValueError, match=r"--mode must be one of fastswitch, vllm-v1, vllm-base"):
        mode_settings("vllm-v2")
