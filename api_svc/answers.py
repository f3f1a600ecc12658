"""OpenAI's response objects: whole answers and stream chunks, for completions and chat."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api_svc.door import Usage


@dataclass(frozen=True, slots=True)
class Shape:
    """What every object of one answer shares, and which optional parts it carries:
    ``token_ids`` (the ``return_token_ids`` extension), ``usage`` on the last stream chunk
    (``stream_options.include_usage``), usage on every chunk (``continuous_usage_stats``)."""

    id: str
    created: int
    model: str
    chat: bool
    token_ids: bool = False
    include_usage: bool = False
    continuous_usage: bool = False
    _head: bytes = field(default=b"", init=False, repr=False, compare=False)
    _text_head: bytes = field(default=b"", init=False, repr=False, compare=False)
    _text_tail: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # what every chunk of the answer begins with, encoded once
        head = (
            b'data: {"id":' + _string(self.id) + b',"object":' + _string(self._object)
            + b',"created":' + str(self.created).encode() + b',"model":'
            + _string(self.model) + b',"choices":[{"index":0,'
        )  # fmt: skip
        object.__setattr__(self, "_head", head)
        # a chunk of text only (no role, no finish, no ids, no running usage): nearly every
        # chunk of a stream is this one, so its parts around the text are encoded once too
        if not (self.token_ids or self.continuous_usage):
            usage = b',"usage":null' if self.include_usage else b""
            text_head = head + (b'"delta":{"content":' if self.chat else b'"text":')
            text_tail = (b"}" if self.chat else b"") + b',"logprobs":null,"finish_reason":null}]'
            object.__setattr__(self, "_text_head", text_head)
            object.__setattr__(self, "_text_tail", text_tail + usage + b"}\n\n")

    @property
    def _object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def whole(
        self,
        text: str,
        finish: str | None,
        usage: Usage,
        ids: Sequence[int],
        prompt_ids: Sequence[int],
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if self.token_ids:
            choice["token_ids"] = list(ids)
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.as_json(),
        }
        if self.token_ids:
            out["prompt_token_ids"] = list(prompt_ids)
        return out

    def chunk(
        self,
        text: str | None,
        finish: str | None = None,
        *,
        usage: Usage,
        role: bool = False,
        ids: Sequence[int] = (),
    ) -> bytes:
        """One stream chunk as its whole ``data:`` event, encoded straight to bytes: this runs
        for every chunk of every stream, so the parts every chunk of the answer shares are encoded
        once (``_head``) and the rest is joined, not built as a dict and serialised (the output
        is the JSON ``json.dumps`` would give; tests parse it)."""
        if self._text_tail and text is not None and finish is None and not role:
            return self._text_head + _string(text) + self._text_tail
        parts = [self._head]
        if self.chat:
            parts.append(b'"delta":{')
            if role:
                parts.append(b'"role":"assistant"')
            if text is not None:
                parts.append(b',"content":' if role else b'"content":')
                parts.append(_string(text))
            parts.append(b"}")
        else:
            parts.append(b'"text":')
            parts.append(_string(text or ""))
        parts.append(b',"logprobs":null,"finish_reason":')
        parts.append(b"null" if finish is None else _string(finish))
        if self.token_ids:
            parts.append(b',"token_ids":[')
            parts.append(",".join(map(str, ids)).encode())
            parts.append(b"]")
        parts.append(b"}]")
        if self.continuous_usage:
            parts.append(b',"usage":')
            parts.append(json.dumps(usage.as_json(), separators=(",", ":")).encode())
        elif self.include_usage:
            parts.append(b',"usage":null')
        parts.append(b"}\n\n")
        return b"".join(parts)

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.as_json(),
        }


_encode_string = json.encoder.encode_basestring  # the C encoder json.dumps(ensure_ascii=False) uses


def _string(text: str) -> bytes:
    """A JSON string literal in UTF-8 (non-ASCII kept; a lone surrogate, which no detokenised
    text holds, would become U+FFFD)."""
    return _encode_string(text).encode("utf-8", "replace")
