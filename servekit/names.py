"""The names that cross packages, defined once: modes, policies, log levels, swap layouts.

A mode is a bundle of settings that the scheduler and the workers must agree on; what a mode means
is :func:`mode_settings`, the one function every service (and the launcher) calls. Each part of a
mode also has its own flag (``--swap-layout``, ``--swap-sync``, ``--no-kv-reuse``,
``--preemption``, ``--[no-]device-prefix-cache``, ...), which overrides the mode's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    FASTSWITCH = "fastswitch"  # block-group swaps, asynchronous, KV reuse and retention
    VLLM_V1 = "vllm-v1"  # a current vLLM: device prefix cache, recompute only, no host tier
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


class Preemption(StrEnum):
    SWAP = "swap"  # the preempted request's KV goes to the host arena and comes back
    RECOMPUTE = "recompute"  # its KV is dropped and its tokens prefilled again


class SwapLayout(StrEnum):
    GROUP = "group"  # one copy per contiguous block run, all layers at once
    PER_LAYER = "per-layer"  # one copy per block, layer and K/V (the vLLM-style baseline)


MODES: tuple[str, ...] = tuple(m.value for m in Mode)
POLICIES: tuple[str, ...] = tuple(p.value for p in Policy)
PREEMPTIONS: tuple[str, ...] = tuple(p.value for p in Preemption)
LOG_LEVELS: tuple[str, ...] = tuple(level.value for level in LogLevel)
SWAP_LAYOUTS: tuple[str, ...] = tuple(s.value for s in SwapLayout)


@dataclass(frozen=True, slots=True)
class ModeSettings:
    """What a mode sets by default. Scheduler: ``preemption``, ``kv_reuse``, ``retain``,
    ``device_prefix_cache``, ``async_scheduling``; worker: the swap path (used only when the
    scheduler swaps)."""

    swap_layout: SwapLayout
    swap_sync: bool  # copies inside the step, before the forward (vs. on the swap engine's thread)
    kv_reuse: bool  # a swapped-in request's host copy stays valid; swap-outs move only new blocks
    retain: bool  # finished requests' KV is kept in the host arena for later prompts
    preemption: Preemption  # swap needs a KV store; without one the scheduler recomputes
    device_prefix_cache: bool  # finished requests' full blocks stay cached in the worker's pool
    async_scheduling: bool  # a worker's next step is planned while its current one runs


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
    """The one meaning of each mode (both services and the launcher call this).

    ``vllm-v1`` has no host tier: it recomputes preempted requests, retains nothing and reuses
    only what its worker's device cache holds. Its swap path is the baseline's (per-layer, in
    the step), which only an explicit ``--preemption swap`` ever uses. FastSwitch's device tier
    stays off by default until the policy joining it to the host tier is measured (issue 11).
    """
    match parse_mode(mode):
        case Mode.FASTSWITCH:
            return ModeSettings(
                SwapLayout.GROUP,
                swap_sync=False,
                kv_reuse=True,
                retain=True,
                preemption=Preemption.SWAP,
                device_prefix_cache=False,
                async_scheduling=True,
            )
        case Mode.VLLM_V1:
            return ModeSettings(
                SwapLayout.PER_LAYER,
                swap_sync=True,
                kv_reuse=False,
                retain=False,
                preemption=Preemption.RECOMPUTE,
                device_prefix_cache=True,
                async_scheduling=False,
            )
        case Mode.VLLM_BASELINE:
            return ModeSettings(
                SwapLayout.PER_LAYER,
                swap_sync=True,
                kv_reuse=False,
                retain=False,
                preemption=Preemption.SWAP,
                device_prefix_cache=False,
                async_scheduling=False,
            )
