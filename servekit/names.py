"""The names that cross packages, defined once: modes, policies, log levels, swap layouts.

A mode is a bundle of settings that the scheduler and the workers must agree on; what a mode means
is :func:`mode_settings`, the one function every service (and the launcher) calls. Each part of a
mode also has its own flag (``--swap-layout``, ``--swap-sync``, ``--no-kv-reuse``, ...), which
overrides the mode's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    FASTSWITCH = "fastswitch"  # block-group swaps, asynchronous, KV reuse and retention
    VLLM_BASELINE = "vllm-baseline"  # vLLM 0.3.3 (the paper): per-layer copies in the step


class Policy(StrEnum):
    VTC = "vtc"
    PRIORITY = "priority"
    FCFS = "fcfs"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class SwapLayout(StrEnum):
    GROUP = "group"  # one copy per contiguous block run, all layers at once
    PER_LAYER = "per-layer"  # one copy per block, layer and K/V (the vLLM-style baseline)


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
POLICIES: tuple[str, ...] = tuple(p.value for p in Policy)
LOG_LEVELS: tuple[str, ...] = tuple(level.value for level in LogLevel)
SWAP_LAYOUTS: tuple[str, ...] = tuple(s.value for s in SwapLayout)


@dataclass(frozen=True, slots=True)
class ModeSettings:
    """What a mode sets by default. Scheduler: ``kv_reuse``, ``retain``; worker: the swap path."""

    swap_layout: SwapLayout
    swap_sync: bool  # copies inside the step, before the forward (vs. on the swap engine's thread)
    kv_reuse: bool  # a swapped-in request's host copy stays valid; swap-outs move only new blocks
    retain: bool  # finished requests' KV is kept in the host arena for later prompts


def parse_choice(kind: type[StrEnum], flag: str, value: object) -> StrEnum:
    """``kind(value)``, or ValueError naming the flag, the value and the choices."""
    try:
        return kind(str(value))
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ValueError(f"{flag} must be one of {choices}; got {value!r}") from None


def parse_mode(value: object) -> Mode:
    mode = parse_choice(Mode, "--mode", value)
    assert isinstance(mode, Mode)
    return mode


def mode_settings(mode: Mode | str) -> ModeSettings:
    """The one meaning of each mode (both services and the launcher call this)."""
    match parse_mode(mode):
        case Mode.FASTSWITCH:
            return ModeSettings(SwapLayout.GROUP, swap_sync=False, kv_reuse=True, retain=True)
        case Mode.VLLM_BASELINE:
            return ModeSettings(SwapLayout.PER_LAYER, swap_sync=True, kv_reuse=False, retain=False)
