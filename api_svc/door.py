"""From an OpenAI request to a scheduler stream: tenant, prompt ids, sampling, and the answer.

The door tokenizes (the model directory's tokenizer and chat template; the weights are never
read) and sends token ids, so it knows a prompt's length before the scheduler does (for the
``max_tokens`` default: the rest of the model's context). Everything that decides what a request
generates -- validation against the model, sampling, detokenisation, stop strings -- is the
scheduler's, so both doors give the same tokens and text for the same request.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from api_svc.errors import ApiError, bad_request
from api_svc.protocol import ChatCompletionRequest, CompletionRequest, _Sampling
from client.aio import AsyncClient
from client.options import SamplingOptions
from client.stream import GenerationStream
from proto import scheduler_pb2 as pb
from servekit.modelspec import ModelSpec
from servekit.tokenizer import Tokenizer
from servekit.validation import validate_tenant

# OpenAI's defaults where a request leaves a field out.
_DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready for the scheduler."""

    request_id: str
    prompt_ids: list[int]
    options: SamplingOptions
    tenant: str
    priority: int
    retain_ttl_s: float | None


@dataclass(slots=True)
class Usage:
    """Token counts of one answer, as OpenAI's ``usage`` reports them."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0

    def finish(self, final: pb.GenerateChunk) -> None:
        """The scheduler's counts, from the final chunk's metrics."""
        if final.HasField("metrics"):
            self.prompt_tokens = final.metrics.prompt_tokens or self.prompt_tokens
            self.cached_tokens = final.metrics.cached_prompt_tokens

    def as_json(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def finish_reason(reason: int) -> str:
    """OpenAI's finish_reason for the scheduler's (``cancelled``/``aborted`` never reach a
    reader as a normal end: the door turns them into errors)."""
    return "length" if reason == pb.FINISH_REASON_LENGTH else "stop"


@dataclass(slots=True)
class DoorConfig:
    """What the door needs to know of the deployment."""

    model_names: tuple[str, ...]
    default_max_tokens: int = 4096
    chat_retain_ttl_s: float | None = 0.0  # None: chat turns are not retained for the next
    request_timeout_s: float = 3600.0
    created: int = field(default_factory=lambda: int(time.time()))


class Door:
    """Turns validated OpenAI requests into scheduler streams."""

    def __init__(
        self, client: AsyncClient, tokenizer: Tokenizer, spec: ModelSpec, config: DoorConfig
    ) -> None:
        if not config.model_names:
            raise ValueError("at least one served model name is needed")
        self.client = client
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = config

    @property
    def model_name(self) -> str:
        return self.config.model_names[0]

    @property
    def max_model_len(self) -> int:
        return self.spec.max_model_len

    def check_model(self, name: str) -> None:
        if name not in self.config.model_names:
            raise ApiError(
                404,
                f"model {name!r} does not exist; served: {list(self.config.model_names)}",
                param="model",
                code="model_not_found",
            )

    # ---------------------------------------------------------------- preparing

    def tenant(self, key_tenant: str | None, user: str | None) -> str:
        """The key's tenant when keys are on; else ``user``; else ``default``."""
        if key_tenant is not None:
            return key_tenant
        if user is None or user == "":
            return "default"
        try:
            validate_tenant(user)  # the scheduler's own rule, checked here to name the field
        except ValueError as err:
            raise bad_request(f"user names the tenant: {err}", param="user") from None
        return user

    def completion(self, req: CompletionRequest, key_tenant: str | None) -> Prepared:
        req.check_supported()
        self.check_model(req.model)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            try:
                ids = self.tokenizer.encode_prompt(prompt)
            except ValueError as err:
                raise bad_request(str(err), param="prompt") from None
        else:
            ids = list(prompt)
        return self._prepare(req, ids, req.max_tokens, key_tenant, retain_ttl_s=None)

    def chat(self, req: ChatCompletionRequest, key_tenant: str | None) -> Prepared:
        req.check_supported()
        self.check_model(req.model)
        messages = [m.for_template() for m in req.messages]
        try:
            ids = self.tokenizer.render_chat(
                messages, add_generation_prompt=req.add_generation_prompt
            )
        except ValueError as err:
            raise bad_request(f"chat template: {err}", param="messages") from None
        return self._prepare(
            req, ids, req.output_limit, key_tenant, retain_ttl_s=self.config.chat_retain_ttl_s
        )

    def _prepare(
        self,
        req: _Sampling,
        prompt_ids: list[int],
        max_tokens: int | None,
        key_tenant: str | None,
        *,
        retain_ttl_s: float | None,
    ) -> Prepared:
        if not prompt_ids:
            raise bad_request("the prompt is empty", param="prompt")
        if max_tokens is None:
            # OpenAI: up to the model's context. The scheduler judges a prompt that is too long.
            max_tokens = max(
                1, min(self.config.default_max_tokens, self.max_model_len - len(prompt_ids))
            )
        try:
            options = SamplingOptions(
                max_tokens=max_tokens,
                temperature=_DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=req.top_k or 0,
                seed=req.seed,
                stop=req.stop_strings,
                stop_token_ids=tuple(req.stop_token_ids or ()),
                ignore_eos=req.ignore_eos,
            )
        except ValueError as err:
            raise bad_request(str(err)) from None
        return Prepared(
            request_id=uuid.uuid4().hex,
            prompt_ids=prompt_ids,
            options=options,
            tenant=self.tenant(key_tenant, req.user),
            priority=req.priority,
            retain_ttl_s=retain_ttl_s,
        )

    # ---------------------------------------------------------------- running

    def open(self, p: Prepared) -> GenerationStream:
        """The scheduler stream of a prepared request (the RPC starts on the first read)."""
        return self.client.generate_stream(
            prompt_token_ids=p.prompt_ids,
            options=p.options,
            retain_ttl_s=p.retain_ttl_s,
            tenant=p.tenant,
            priority=p.priority,
            request_id=p.request_id,
            timeout_s=self.config.request_timeout_s,
        )
