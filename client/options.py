"""How a completion is sampled, given once: :class:`SamplingOptions`, shared by every call of the
async and sync clients (and by the load generator).

A call takes either ``options=SamplingOptions(...)``, the same fields as keywords
(``max_tokens=32, temperature=0.7``), or both -- the keywords then override the options' fields::

    greedy = SamplingOptions(max_tokens=64, stop=("\n\n",), stop_token_ids=(2,))
    await c.generate("Hello", options=greedy)
    await c.generate("Hello", options=greedy, max_tokens=8)  # == replace(greedy, max_tokens=8)

The keyword types are :class:`SamplingArgs`; :class:`GenerateArgs` and :class:`TurnArgs` are the
whole keyword sets of ``generate``/``generate_stream`` and ``send``/``send_stream``, so a wrapper
(the sync client) forwards them without writing them out again.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from proto import scheduler_pb2 as pb

_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Sampling of one completion; ValueError on construction for what the client can tell is
    wrong before any RPC. Ranges of temperature / top_p / top_k, and the number and length of
    stop strings, are the server's to judge (INVALID_ARGUMENT). ``seed`` None draws one on the
    server.

    ``stop`` lists stop strings (OpenAI's ``stop``; one string is one stop string): the
    completion ends before the first of them its text contains, with finish reason "stop".
    ``stop_token_ids`` lists token ids that end it (the token is kept). Both are kept as
    tuples. The old form ``stop=(2, 7)`` (token ids) still works: a DeprecationWarning, and
    the ids go to ``stop_token_ids``."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    stop_token_ids: Sequence[int] = ()

    def __post_init__(self) -> None:
        mt = self.max_tokens
        if isinstance(mt, bool) or not isinstance(mt, int) or mt <= 0:
            raise ValueError(f"max_tokens must be a positive int, got {mt!r}")
        if self.seed is not None and not 0 <= self.seed <= _UINT64_MAX:
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed!r}")
        ids = tuple(self.stop_token_ids)
        bad_ids = [t for t in ids if not _is_token_id(t)]
        if bad_ids:
            raise ValueError(f"stop_token_ids must be ints, got {bad_ids[0]!r}")
        stop: tuple[object, ...] = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if _is_legacy_stop(stop):
            warnings.warn(
                "SamplingOptions(stop=<token ids>) is deprecated: stop takes stop strings now; "
                "pass the ids as stop_token_ids",
                DeprecationWarning,
                stacklevel=3,
            )
            ids += tuple(t for t in stop if isinstance(t, int) and t not in ids)
            stop = ()
        bad = [s for s in stop if not isinstance(s, str)]
        if bad:
            raise ValueError(
                f"stop must be stop strings (or, the old form, only token ids), got {bad[0]!r}"
            )
        # frozen: normalised once, here
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", ids)

    def updated(self, sampling: SamplingArgs) -> SamplingOptions:
        """These options with the given keyword fields replaced (``stop=None``: no stop
        strings; ``stop_token_ids=None``: no stop ids). The old form ``stop=<token ids>``
        replaces the stop token ids, as it used to."""
        if not sampling:
            return self
        changes: dict[str, Any] = dict(sampling)
        for name in ("stop", "stop_token_ids"):
            if name in changes and changes[name] is None:
                changes[name] = ()
        stop = changes.get("stop", ())
        if not isinstance(stop, str) and _is_legacy_stop(tuple(stop)):
            changes.setdefault("stop_token_ids", ())
        return dataclasses.replace(self, **changes)

    def to_proto(self) -> pb.SamplingParams:
        params = pb.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_tokens=self.max_tokens,
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            stop=list(self.stop),
        )
        if self.seed is not None:
            params.seed = self.seed
        return params


def _is_token_id(t: object) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _is_legacy_stop(stop: tuple[object, ...]) -> bool:
    """``stop`` in its old meaning: a non-empty list of token ids only."""
    return bool(stop) and all(_is_token_id(t) for t in stop)


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
    stop: Sequence[str] | None
    ignore_eos: bool
    stop_token_ids: Sequence[int] | None


class TurnArgs(SamplingArgs, total=False):
    """Every keyword of a conversation turn (``send``, ``send_stream``)."""

    options: SamplingOptions | None
    priority: int
    request_id: str | None
    timeout_s: float | None


class GenerateArgs(TurnArgs, total=False):
    """Every keyword of a completion (``generate``, ``generate_stream``)."""

    tenant: str
    retain_ttl_s: float | None
