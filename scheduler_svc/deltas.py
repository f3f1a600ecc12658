"""What a request's stream hands out at each step: new token ids and the text they add.

Text is detokenised incrementally and released only up to where it is no longer cut
mid-character (a multi-byte character split across tokens decodes to U+FFFD until its last byte
arrives). With stop strings, the released text then goes through a ``StopMatcher``: it ends just
before the first stop string, and a tail that could still become one is held back until it
cannot (or the request ends), so no released text ever shows part of a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from servekit.tokenizer import Tokenizer


class Delta(NamedTuple):
    """New output of one request since the last delta; ``finished`` on its last one."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool


class StopMatcher:
    """Finds the first stop string in a text that arrives in pieces (plain strings, no tokens).

    ``push`` returns the part of the text that can be released now. Invariants: the released
    pieces concatenated are the whole text up to the earliest-starting match (without it), or,
    without a match, a prefix of the text that ends before any tail that is the start of a
    stop string (all of the text once ``final``); after a match, ``matched`` is set and nothing
    more is released. Held-back text is shorter than the longest stop string.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        if any(not s for s in stop):
            raise ValueError(f"stop strings must be non-empty, got {list(stop)!r}")
        self._stop = tuple(stop)
        self._held = ""
        self.matched = False

    def push(self, text: str, final: bool = False) -> str:
        """Adds `text` (what follows everything pushed before); returns what may be released."""
        if self.matched:
            return ""
        buf = self._held + text
        # The held tail has no whole stop string in it, so any match ends in `text`.
        starts = [i for i in (buf.find(s) for s in self._stop) if i >= 0]
        if starts:
            self.matched, self._held = True, ""
            return buf[: min(starts)]
        keep = 0 if final else self._prefix_tail(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def _prefix_tail(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:k]):
                    best = k
                    break
        return best


class TextDelta:
    """Incremental detokenisation of one request's output ids, cut at its first stop string.

    ``stopped`` is set once the output text contains one of ``stop``; from then on nothing
    more is released (the text ends just before the stop string)."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._sent = 0
        self._stops = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        return self._stops.matched

    def next(self, output_ids: list[int], final: bool) -> str:
        """The text `output_ids` add since the last call that may be shown: "" while only an
        incomplete character (or the start of a stop string) is new, after a stop string, or
        when the tokenizer cannot decode."""
        try:
            text = self._tokenizer.decode(output_ids)
        except ValueError:
            return ""
        if not final:
            text = text.rstrip("\ufffd")  # an incomplete character waits for its last byte
        new = text[self._sent :]
        self._sent = max(self._sent, len(text))
        return self._stops.push(new, final)
