"""Checks of a generation request at the edge, before anything is scheduled.

Every check raises ``ValueError`` with a short message; the scheduler maps it to
``INVALID_ARGUMENT``. Sizes are checked before any work on the value (no tokenising, no copy),
and a message never quotes more than ``ECHO_CHARS`` characters of a caller's string (`clip`):
numbers are named, names and texts are not echoed. Pure Python, no torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

__all__ = [
    "ECHO_CHARS",
    "MAX_CONVERSATION_ID_CHARS",
    "MAX_REQUEST_ID_CHARS",
    "MAX_STOP_CHARS",
    "MAX_STOP_STRINGS",
    "MAX_STOP_TOKEN_IDS",
    "MAX_TENANT_CHARS",
    "MAX_TTL_S",
    "PROMPT_BYTES_PER_TOKEN",
    "clip",
    "validate_conversation_id",
    "validate_count",
    "validate_generation",
    "validate_request_id",
    "validate_sampling",
    "validate_stop",
    "validate_tenant",
    "validate_text_bytes",
    "validate_ttl",
]

_MAX_LISTED = 5
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 256
ECHO_CHARS = 32  # the most of a caller's string an error message quotes
MAX_REQUEST_ID_CHARS = 128
MAX_TENANT_CHARS = 64
MAX_CONVERSATION_ID_CHARS = 64
MAX_TTL_S = 30 * 24 * 3600.0  # 30 days: the longest retention a request or conversation asks
# A text prompt longer than max_model_len * this many UTF-8 bytes can never tokenise to fewer
# than max_model_len tokens with any real vocabulary (a token is rarely over 16 bytes): it is
# rejected before the tokenizer sees it.
PROMPT_BYTES_PER_TOKEN = 16

_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:@/+=~-]+")
_TENANT = re.compile(r"[A-Za-z0-9_.:@-]+")
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9_.:-]+")


def clip(value: str) -> str:
    """`value` as an error message may quote it: repr of its first ``ECHO_CHARS`` characters."""
    if len(value) <= ECHO_CHARS:
        return repr(value)
    return f"{value[:ECHO_CHARS]!r}..."


def _validate_name(
    value: str, what: str, max_chars: int, pattern: re.Pattern[str], alpha: str
) -> None:
    # Length first: the pattern never runs over an over-long value, and the value is not echoed.
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        n = len(value) if isinstance(value, str) else "no"
        raise ValueError(f"{what} must be 1-{max_chars} characters, got {n}")
    if not pattern.fullmatch(value):
        raise ValueError(f"{what} must be characters of {alpha}")


def validate_request_id(request_id: str) -> None:
    """1-``MAX_REQUEST_ID_CHARS`` characters of ``[A-Za-z0-9_.:@/+=~-]``."""
    _validate_name(
        request_id, "request_id", MAX_REQUEST_ID_CHARS, _REQUEST_ID, "[A-Za-z0-9_.:@/+=~-]"
    )


def validate_tenant(tenant: str) -> None:
    """1-``MAX_TENANT_CHARS`` characters of ``[A-Za-z0-9_.:@-]``."""
    _validate_name(tenant, "tenant", MAX_TENANT_CHARS, _TENANT, "[A-Za-z0-9_.:@-]")


def validate_conversation_id(conversation_id: str) -> None:
    """1-``MAX_CONVERSATION_ID_CHARS`` characters of ``[A-Za-z0-9_.:-]`` (the server's ids are
    ``conv-`` and 24 hex digits)."""
    _validate_name(
        conversation_id,
        "conversation_id",
        MAX_CONVERSATION_ID_CHARS,
        _CONVERSATION_ID,
        "[A-Za-z0-9_.:-]",
    )


def validate_text_bytes(text: str, what: str, max_bytes: int) -> None:
    """At most `max_bytes` UTF-8 bytes; decided from the length alone where it can be (a
    character is 1-4 bytes), so an over-long text costs nothing to refuse."""
    n = len(text)
    if n > max_bytes or (
        n * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise ValueError(f"{what} is longer than {max_bytes} bytes")


def validate_count(n: int, what: str, limit: int) -> None:
    """At most `limit` items (checked on the length before the list is copied)."""
    if n > limit:
        raise ValueError(f"{what} has {n} items, at most {limit} are allowed")


def validate_ttl(ttl_s: float, what: str) -> None:
    """A finite number of seconds in ``[0, MAX_TTL_S]`` (NaN and infinities are refused)."""
    if not (isinstance(ttl_s, int | float) and math.isfinite(ttl_s) and 0 <= ttl_s <= MAX_TTL_S):
        raise ValueError(
            f"{what} must be a finite number of seconds in [0, {MAX_TTL_S:.0f}], got {ttl_s!r:.40}"
        )


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
            raise ValueError(f"stop string {i} must be a non-empty string")
        if len(s) > MAX_STOP_CHARS:
            raise ValueError(
                f"stop string {i} has {len(s)} characters, at most {MAX_STOP_CHARS} are allowed: "
                f"{clip(s)}"
            )
