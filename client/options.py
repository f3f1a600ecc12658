"""How a completion is sampled, given once: :class:`SamplingOptions`, shared by every call of the
async and sync clients (and by the load generator).

A call takes either ``options=SamplingOptions(...)``, the same fields as keywords
(``max_tokens=32, temperature=0.7``), or both -- the keywords then override the options' fields::

    greedy = SamplingOptions(max_tokens=64, stop=(2,))
    await c.generate("Hello", options=greedy)
    await c.generate("Hello", options=greedy, max_tokens=8)  # == SamplingOptions(8, stop=(2,))

The keyword types are :class:`SamplingArgs`; :class:`GenerateArgs` and :class:`TurnArgs` are the
whole keyword sets of ``generate``/``generate_stream`` and ``send``/``send_stream``, so a wrapper
(the sync client) forwards them without writing them out again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from proto import scheduler_pb2 as pb

_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Sampling of one completion; ValueError on construction for what the client can tell is
    wrong before any RPC. Ranges of temperature / top_p / top_k are the server's to judge
    (INVALID_ARGUMENT). ``stop`` lists stop token ids (kept as a tuple); ``seed`` None draws
    one on the server."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[int] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        mt = self.max_tokens
        if isinstance(mt, bool) or not isinstance(mt, int) or mt <= 0:
            raise ValueError(f"max_tokens must be a positive int, got {mt!r}")
        if self.seed is not None and not 0 <= self.seed <= _UINT64_MAX:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed!r}")
        stop = tuple(self.stop)
        bad = [t for t in stop if isinstance(t, bool) or not isinstance(t, int)]
        if bad:
            raise ValueError(f"stop must be a list of token ids (ints), got {bad[0]!r}")
        object.__setattr__(self, "stop", stop)  # frozen: normalised once, here

    def updated(self, sampling: SamplingArgs) -> SamplingOptions:
        """These options with the given keyword fields replaced (``stop=None``: no stop ids)."""
        if not sampling:
            return self
        changes: dict[str, Any] = dict(sampling)
        if "stop" in changes and changes["stop"] is None:
            changes["stop"] = ()
        return dataclasses.replace(self, **changes)

    def to_proto(self) -> pb.SamplingParams:
        params = pb.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stop_token_ids=list(self.stop),
            ignore_eos=self.ignore_eos,
        )
        if self.seed is not None:
            params.seed = self.seed
        return params


def resolve(options: SamplingOptions | None, sampling: SamplingArgs) -> SamplingOptions:
    """The options of one call: ``options`` (default: ``SamplingOptions()``) updated by the
    call's sampling keywords."""
    return (options or SamplingOptions()).updated(sampling)


class SamplingArgs(TypedDict, total=False):
    """The fields of :class:`SamplingOptions` as call keywords (defaults: the options')."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: Sequence[int] | None
    ignore_eos: bool


class TurnArgs(SamplingArgs, total=False):
    """Every keyword of a conversation turn (``send``, ``send_stream``)."""

    options: SamplingOptions | None
    priority: int
    request_id: str | None
    timeout_s: float | None


class GenerateArgs(TurnArgs, total=False):
    """Every keyword of a completion (``generate``, ``generate_stream``)."""

    tenant: str
