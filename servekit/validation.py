"""Checks of a generation request at the edge, before anything is scheduled.

Every check raises ``ValueError`` with the offending values in the message; the scheduler
maps it to ``INVALID_ARGUMENT``. Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "MAX_STOP_CHARS",
    "MAX_STOP_STRINGS",
    "validate_generation",
    "validate_sampling",
    "validate_stop",
]

_MAX_LISTED = 5
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


def validate_generation(
    prompt_ids: Sequence[int], max_tokens: int, *, vocab_size: int, max_model_len: int
) -> None:
    """Raise ``ValueError`` unless the request fits the model.

    Rules: the prompt is non-empty; ``max_tokens >= 1``; ``len(prompt) < max_model_len``;
    ``len(prompt) + max_tokens <= max_model_len`` (the whole sequence fits the context, so a
    request never fails half way); every id lies in ``[0, vocab_size)``.
    """
    n = len(prompt_ids)
    if n == 0:
        raise ValueError("prompt is empty: at least one token is needed")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if n >= max_model_len:
        raise ValueError(
            f"prompt has {n} tokens but the model's context (max_model_len) is "
            f"{max_model_len}: the prompt must be shorter than that"
        )
    if n + max_tokens > max_model_len:
        raise ValueError(
            f"prompt ({n} tokens) + max_tokens ({max_tokens}) = {n + max_tokens} exceeds the "
            f"model's context (max_model_len) of {max_model_len}; use max_tokens <= "
            f"{max_model_len - n}"
        )
    bad = [
        (i, t)
        for i, t in enumerate(prompt_ids)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size
    ]
    if bad:
        listed = ", ".join(f"{t!r} at {i}" for i, t in bad[:_MAX_LISTED])
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise ValueError(
            f"prompt has {len(bad)} token id(s) outside the vocabulary [0, {vocab_size}): "
            f"{listed}{more}"
        )


def validate_sampling(temperature: float, top_p: float, top_k: int, seed: int | None) -> None:
    """Raise ``ValueError`` unless the sampling parameters make sense.

    ``temperature >= 0`` (0 is greedy); ``0 < top_p <= 1``; ``top_k >= 0`` (0 disables it);
    ``seed`` is ``None`` or an integer.
    """
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == float("inf"):
        raise ValueError("temperature must be finite")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")


def validate_stop(stop: Sequence[str]) -> None:
    """Raise ``ValueError`` unless the stop strings are at most ``MAX_STOP_STRINGS``, each
    non-empty and at most ``MAX_STOP_CHARS`` characters."""
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stop)}")
    for i, s in enumerate(stop):
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop string {i} must be a non-empty string, got {s!r}")
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(
                f"stop string {i} has {len(s)} characters, at most {MAX_STOP_CHARS} are allowed: "
                f"{s[:32]!r}..."
            )
