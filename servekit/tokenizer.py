"""Text <-> token ids, and chat templates, for the tiny model and HF directories.

``load_tokenizer("tiny")`` gives the ``ByteTokenizer`` (ids 0..255 are bytes, then a few
specials); ``load_tokenizer(DIR)`` wraps ``DIR/tokenizer.json`` with the ``tokenizers``
library. A directory without ``tokenizer.json`` still loads: token ids keep working, and
only a call that needs text raises ``TokenizerUnavailableError`` (a ``ValueError``).

Chats: ``render_chat`` renders the model's own Jinja chat template the way transformers does
(``servekit.chat_template``) and encodes the text the HF way: special tokens written in the text
become their ids, and none are added (``encode_with_specials``). The tiny model has a Jinja
template of its own (``TINY_CHAT_TEMPLATE``). A directory without any template falls back to a
simple, non-Jinja one chosen from the vocabulary (see ``HFTokenizer``). ``encode`` never adds
special tokens.

The scheduler's Chat API appends each new turn to a conversation's exact ids with
``continue_chat``. Reuse across turns: with ``add_generation_prompt=True`` turn k renders
``prompt_k``; when the model's reply ids ``r_k`` end with its end-of-turn token and are the
tokenizer's own encoding of the reply text, the rendering of turn k+1 (history, the reply as an
assistant message, a new user message) begins with ``prompt_k + r_k`` for templates that render
history unchanged (the tiny template, Llama 3, ChatML). Otherwise only the common prefix of the
two renderings is reused: templates that rewrite earlier turns (Qwen 3 strips an earlier reply's
``<think>`` part; Llama 3 trims a reply's leading and trailing whitespace), and replies whose
generated ids are not the tokenizer's own encoding of their text.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from servekit.chat_template import ChatTemplate
from servekit.modelspec import TINY_MODEL, load_model_spec, read_special_token_ids

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerUnavailableError",
    "UnavailableTokenizer",
    "load_tokenizer",
]

Message = tuple[str, str]  # (role, content)
ChatMessage = Mapping[str, Any]  # {"role": ..., "content": str | [{"type": "text", ...}], ...}

# The tiny model's chat template: <bos> then <|role|>content<|end|> per message, then
# <|assistant|> (content parts: their texts joined).
TINY_CHAT_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception("unknown chat role '" ~ message['role']
                            ~ "'; expected system, user or assistant") }}
    {%- endif %}
    {%- if message['content'] is string %}
        {%- set content = message['content'] %}
    {%- else %}
        {%- set content = message['content'] | selectattr('type', 'equalto', 'text')
                                             | map(attribute='text') | join('') %}
    {%- endif %}
    {{- '<|' ~ message['role'] ~ '|>' ~ content ~ '<|end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}
"""


class TokenizerUnavailableError(ValueError):
    """Text was needed but the model directory has no ``tokenizer.json``."""


class Tokenizer(ABC):
    """Text to token ids and back, plus a chat template."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer itself defines (the model's may be larger)."""

    @property
    @abstractmethod
    def bos_token_id(self) -> int | None: ...

    @property
    @abstractmethod
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no special tokens added."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens rendered as their names)."""

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt: ``<bos>`` (when the model has one), then ``text``.

        The one rule every entry point (the API, ``fastswitch run``) uses for text prompts.
        Empty text is a ValueError: a prompt needs at least one token of its own.
        """
        if not text:
            raise ValueError("prompt is empty: at least one token is needed")
        bos = self.bos_token_id
        return ([] if bos is None else [bos]) + self.encode(text)

    @abstractmethod
    def encode_with_specials(self, text: str) -> list[int]:
        """Token ids of rendered chat text: special tokens' names in ``text`` become their ids,
        and none are added (transformers' ``encode(text, add_special_tokens=False)``)."""

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The model's Jinja chat template; None means the simple fallback (``_simple_chat``)."""
        return None

    @property
    def chat_template_text(self) -> str | None:
        """The Jinja text of the chat template (for introspection), None without one."""
        template = self.chat_template
        return None if template is None else template.source

    def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a conversation of ``{"role", "content", ...}`` messages, as
        ``transformers``' ``apply_chat_template(messages, tokenize=True)`` gives them.

        With ``add_generation_prompt`` the ids end with the assistant's turn header, ready for
        the model to answer. A template error (a bad role order, an unknown role) is a
        ``ChatTemplateError`` (a ``ValueError``) with the template's message.
        """
        template = self.chat_template
        if template is None:
            return self._simple_chat(_pairs(messages), add_generation_prompt)
        text = template.render(messages, add_generation_prompt=add_generation_prompt)
        return self.encode_with_specials(text)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """``render_chat`` of ``(role, content)`` pairs (the scheduler's Chat API uses this)."""
        return self.render_chat(
            [{"role": role, "content": content} for role, content in messages],
            add_generation_prompt,
        )

    def continue_chat(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Ids to append to a conversation's history that ends with an assistant reply closed by
        an end-of-turn token (one of ``eos_token_ids``), so that history + these ids is what
        rendering the whole conversation gives (for templates that render history unchanged).

        Found the way transformers' ``encode_message_with_chat_template`` does it: render a
        stand-in ``user, assistant`` exchange with and without ``messages`` and keep what
        follows the exchange's last end-of-turn token. So a template's conversation-level parts
        (a default system message, a date header, ``<bos>``) are not repeated. Without any
        end-of-turn token in the rendering, what follows the common prefix is kept.
        """
        head: list[ChatMessage] = [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "x"},
        ]
        before = self.render_chat(head, add_generation_prompt=False)
        after = self.render_chat(
            [*head, *({"role": role, "content": content} for role, content in messages)],
            add_generation_prompt,
        )
        common = next(
            (i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b),
            min(len(before), len(after)),
        )
        ends = [i for i in range(common) if before[i] in self.eos_token_ids]
        return after[ends[-1] + 1 if ends else common :]

    def _simple_chat(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        """The fallback for a model without a chat template; none by default."""
        raise ValueError(f"{type(self).__name__} has no chat template")


def _pairs(messages: Sequence[ChatMessage]) -> list[Message]:
    """``(role, text)`` of each message for the simple templates: a string content as is, a
    list of parts as their ``"text"`` parts joined."""
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    pairs: list[Message] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str):
            raise ValueError(f"message {index} has no string 'role': {message!r}")
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        if not isinstance(content, str):
            raise ValueError(f"message {index} content must be a string or parts: {content!r}")
        pairs.append((role, content))
    return pairs


class ByteTokenizer(Tokenizer):
    """The tiny model's tokenizer: one id per UTF-8 byte, then specials.

    Ids: ``0..255`` bytes, ``256 <bos>``, ``257 <eos>``, ``258 <|system|>``, ``259 <|user|>``,
    ``260 <|assistant|>``, ``261 <|end|>``. Chat template (``TINY_CHAT_TEMPLATE``, Jinja)::

        <bos> <|role|> content-bytes <|end|> ... [<|assistant|>]

    ``encode`` is bytes only (a special's name in a prompt stays text); ``encode_with_specials``
    turns the specials' names into their ids, as rendered chat text needs.

    ``decode`` turns byte ids into text with ``errors="replace"`` and specials into their
    names; ids outside the vocabulary raise ``ValueError``.
    """

    SPECIALS = ("<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ROLES = ("system", "user", "assistant")
    _SPECIALS_RE = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")

    def __init__(self) -> None:
        self._template = ChatTemplate(
            TINY_CHAT_TEMPLATE,
            special_tokens={"bos_token": "<bos>", "eos_token": "<eos>"},
            origin="tiny chat template",
        )

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.SPECIALS)

    @property
    def bos_token_id(self) -> int:
        return self.special_id("<bos>")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (self.special_id("<eos>"), self.special_id("<|end|>"))

    def special_id(self, name: str) -> int:
        """Id of a special token by name, e.g. ``"<|user|>"``."""
        return 256 + self.SPECIALS.index(name)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        pending = bytearray()
        for token in ids:
            if 0 <= token < 256:
                pending.append(token)
                continue
            if not 256 <= token < self.vocab_size:
                raise ValueError(f"token id {token} outside the vocabulary [0, {self.vocab_size})")
            parts.append(pending.decode("utf-8", errors="replace"))
            pending.clear()
            parts.append(self.SPECIALS[token - 256])
        parts.append(pending.decode("utf-8", errors="replace"))
        return "".join(parts)

    @property
    def chat_template(self) -> ChatTemplate:
        return self._template

    def encode_with_specials(self, text: str) -> list[int]:
        ids: list[int] = []
        for index, piece in enumerate(self._SPECIALS_RE.split(text)):
            if index % 2:  # the odd pieces are the matched special names
                ids.append(self.special_id(piece))
            else:
                ids.extend(piece.encode("utf-8"))
        return ids


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library.

    Chats use the directory's Jinja template when it has one (``chat_template.jinja`` or
    ``tokenizer_config.json``'s ``chat_template``; ids as transformers gives them: the
    ``tokenizers`` library recognises added tokens in the rendered text). Without one, a simple
    non-Jinja template is chosen from the vocabulary:

    * ChatML (Qwen and others) when ``<|im_start|>`` and ``<|im_end|>`` exist:
      ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
      ``<|im_start|>assistant\\n``.
    * Llama 3 when ``<|start_header_id|>``, ``<|end_header_id|>`` and ``<|eot_id|>`` exist:
      ``<bos><|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`` per
      message, then ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
    * Otherwise a plain one: ``<bos>`` then ``{role}: {content}\\n`` per message, then
      ``assistant:``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
        chat_template: ChatTemplate | None = None,
    ) -> None:
        from tokenizers import Tokenizer as _RawTokenizer

        self._tok = _RawTokenizer.from_file(str(path))
        self._bos = bos_token_id
        self._eos = eos_token_ids
        self._template = chat_template

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))

    def encode_with_specials(self, text: str) -> list[int]:
        return self.encode(text)  # the tokenizers library already splits on added tokens

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._template

    def _simple_chat(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        special = self._tok.token_to_id
        im_start, im_end = special("<|im_start|>"), special("<|im_end|>")
        header, header_end, eot = (
            special("<|start_header_id|>"),
            special("<|end_header_id|>"),
            special("<|eot_id|>"),
        )
        ids: list[int] = []
        if im_start is not None and im_end is not None:
            for role, content in messages:
                ids += [im_start, *self.encode(f"{role}\n{content}"), im_end, *self.encode("\n")]
            if add_generation_prompt:
                ids += [im_start, *self.encode("assistant\n")]
            return ids
        if self._bos is not None:
            ids.append(self._bos)
        if header is not None and header_end is not None and eot is not None:
            for role, content in messages:
                ids += [header, *self.encode(role), header_end, *self.encode(f"\n\n{content}")]
                ids.append(eot)
            if add_generation_prompt:
                ids += [header, *self.encode("assistant"), header_end, *self.encode("\n\n")]
            return ids
        for role, content in messages:
            ids += self.encode(f"{role}: {content}\n")
        if add_generation_prompt:
            ids += self.encode("assistant:")
        return ids


class UnavailableTokenizer(Tokenizer):
    """Stands in for a directory without ``tokenizer.json``: ids work, text raises (its chat
    template, if any, is still there to be read)."""

    def __init__(
        self,
        directory: str | Path,
        *,
        vocab_size: int,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
        chat_template: ChatTemplate | None = None,
    ) -> None:
        self._directory = str(directory)
        self._vocab_size = vocab_size
        self._bos = bos_token_id
        self._eos = eos_token_ids
        self._template = chat_template

    @property
    def chat_template(self) -> ChatTemplate | None:
        return self._template

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    def _unavailable(self) -> TokenizerUnavailableError:
        return TokenizerUnavailableError(
            f"{self._directory} has no tokenizer.json: text cannot be used with this model; "
            "pass token ids instead"
        )

    def encode(self, text: str) -> list[int]:
        raise self._unavailable()

    def decode(self, ids: Sequence[int]) -> str:
        raise self._unavailable()

    def encode_with_specials(self, text: str) -> list[int]:
        raise self._unavailable()

    def render_chat(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> list[int]:
        raise self._unavailable()


def load_tokenizer(model: str) -> Tokenizer:
    """The tokenizer of ``"tiny"`` or of a model directory (see the module docstring).

    A directory's chat template is read and compiled here: a broken one is a
    ``ChatTemplateError`` now, not on the first chat.
    """
    if model == TINY_MODEL:
        return ByteTokenizer()
    directory = Path(model)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither {TINY_MODEL!r} nor an existing directory"
        )
    bos, eos = read_special_token_ids(directory)
    template = ChatTemplate.from_directory(directory)
    path = directory / "tokenizer.json"
    if path.is_file():
        return HFTokenizer(path, bos_token_id=bos, eos_token_ids=eos, chat_template=template)
    vocab = load_model_spec(model).vocab_size
    return UnavailableTokenizer(
        directory, vocab_size=vocab, bos_token_id=bos, eos_token_ids=eos, chat_template=template
    )
