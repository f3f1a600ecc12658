"""The request bodies of OpenAI's API that this server takes, as strict pydantic models.

Strict: a wrong type is a 400 (``"1"`` is not a number), a field OpenAI does not define (and that
is not one of ours, below) is a 400, and a field OpenAI defines but we do not implement is a 400
naming it when it asks for something (``n: 2``, ``logprobs: true``, ``tools: [...]``) and
accepted when it asks for the default (``n: 1``, ``presence_penalty: 0``), so clients that always
send their defaults work. Extensions, as vLLM has them: ``top_k``, ``ignore_eos``,
``stop_token_ids``, ``priority`` (higher runs first under ``--policy priority``),
``return_token_ids`` (each choice also carries the ``token_ids`` it adds, and the answer the
``prompt_token_ids``), and ``stream_options.continuous_usage_stats`` (every chunk carries the
usage so far).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api_svc.errors import unsupported

_UINT64_MAX = (1 << 64) - 1

NonNegFloat = Annotated[float, Field(ge=0.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _Sampling(_Strict):
    """Fields shared by completions and chat completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=_UINT64_MAX)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # extensions
    top_k: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    priority: int = 0
    return_token_ids: bool = False

    def check_supported(self) -> None:
        """400 for a supported-by-OpenAI field that asks for what this server does not do."""
        if self.n != 1:
            raise unsupported("n", f"n={self.n} (one choice per request)")
        if self.presence_penalty != 0.0:
            raise unsupported("presence_penalty", "a non-zero presence_penalty")
        if self.frequency_penalty != 0.0:
            raise unsupported("frequency_penalty", "a non-zero frequency_penalty")
        if self.logit_bias:
            raise unsupported("logit_bias", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise unsupported("stream_options", "stream_options without stream: true")

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise unsupported("echo", "echo")
        if self.suffix:
            raise unsupported("suffix", "suffix (insertion)")
        if self.best_of not in (None, 1):
            raise unsupported("best_of", f"best_of={self.best_of}")
        if self.logprobs is not None:
            raise unsupported("logprobs", "logprobs")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request: text, or token ids; a batch of one is unwrapped."""
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise unsupported("prompt", f"a batch of {len(p)} prompts (send one per request)")
            return p[0]  # type: ignore[return-value]
        if isinstance(p, list) and not p:
            raise unsupported("prompt", "an empty prompt list")
        return p  # type: ignore[return-value]


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message. Not strict about extra keys only where clients send them for nothing
    (``name``); a part that is not text is a 400."""

    model_config = ConfigDict(strict=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def for_template(self) -> dict[str, Any]:
        """The message as a chat template reads it (``role``, ``content``; parts kept as
        ``{"type": "text", "text": ...}`` dicts, which templates that take parts expect)."""
        content: Any
        if self.content is None:
            content = ""
        elif isinstance(self.content, str):
            content = self.content
        else:
            content = [part.model_dump() for part in self.content]
        msg: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            msg["name"] = self.name
        return msg


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    add_generation_prompt: bool = True  # extension, as vLLM

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs:
            raise unsupported("logprobs", "logprobs")
        if self.tools or self.functions:
            raise unsupported("tools", "tool calling")
        if self.tool_choice not in (None, "none", "auto"):
            raise unsupported("tool_choice", "tool_choice")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise unsupported("response_format", f"response_format {self.response_format!r}")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise unsupported(
                "max_completion_tokens", "max_tokens and max_completion_tokens that differ"
            )

    @property
    def output_limit(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else (self.max_tokens)
        )
