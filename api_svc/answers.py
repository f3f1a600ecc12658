"""OpenAI's response objects: whole answers and stream chunks, for completions and chat."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        if self.token_ids:
            choice["token_ids"] = list(ids)
        out: dict[str, Any] = {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.continuous_usage:
            out["usage"] = usage.as_json()
        elif self.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self._object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.as_json(),
        }
