"""What a request's stream hands out at each step: new token ids and the text they add.

Text is detokenised incrementally and released only once it no longer ends mid-character (a
multi-byte character split across tokens decodes to U+FFFD until its last byte arrives).
"""

from __future__ import annotations

from typing import NamedTuple

from servekit.tokenizer import Tokenizer


class Delta(NamedTuple):
    """New output of one request since the last delta; ``finished`` on its last one."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool


class TextDelta:
    """Incremental detokenisation of one request's output ids."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._sent = 0

    def next(self, output_ids: list[int], final: bool) -> str:
        """The text `output_ids` add since the last call ("" while a character is incomplete,
        or when the tokenizer cannot decode)."""
        try:
            text = self._tokenizer.decode(output_ids)
        except ValueError:
            return ""
        if text.endswith("\ufffd") and not final:
            return ""
        delta, self._sent = text[self._sent :], len(text)
        return delta
