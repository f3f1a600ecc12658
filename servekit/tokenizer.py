"""Text <-> token ids, and a simple chat template, for the tiny model and HF directories.

``load_tokenizer("tiny")`` gives the ``ByteTokenizer`` (ids 0..255 are bytes, then a few
specials); ``load_tokenizer(DIR)`` wraps ``DIR/tokenizer.json`` with the ``tokenizers``
library. A directory without ``tokenizer.json`` still loads: token ids keep working, and
only a call that needs text raises ``TokenizerUnavailableError`` (a ``ValueError``).

Chat templates are deliberately simple, never Jinja (see ``HFTokenizer``). ``encode`` never
adds special tokens; ``apply_chat_template`` adds the ones its template needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from servekit.modelspec import TINY_MODEL, load_model_spec, read_special_token_ids

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "TokenizerUnavailableError",
    "UnavailableTokenizer",
    "load_tokenizer",
]

Message = tuple[str, str]  # (role, content)


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
    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of a conversation of ``(role, content)`` messages.

        With ``add_generation_prompt`` the ids end with the assistant's turn header, ready
        for the model to answer.
        """


class ByteTokenizer(Tokenizer):
    """The tiny model's tokenizer: one id per UTF-8 byte, then specials.

    Ids: ``0..255`` bytes, ``256 <bos>``, ``257 <eos>``, ``258 <|system|>``, ``259 <|user|>``,
    ``260 <|assistant|>``, ``261 <|end|>``. Chat template::

        <bos> <|role|> content-bytes <|end|> ... [<|assistant|>]

    ``decode`` turns byte ids into text with ``errors="replace"`` and specials into their
    names; ids outside the vocabulary raise ``ValueError``.
    """

    SPECIALS = ("<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ROLES = ("system", "user", "assistant")

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

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        ids = [self.bos_token_id]
        for role, content in messages:
            if role not in self.ROLES:
                raise ValueError(f"unknown chat role {role!r}; expected one of {self.ROLES}")
            ids.append(self.special_id(f"<|{role}|>"))
            ids.extend(self.encode(content))
            ids.append(self.special_id("<|end|>"))
        if add_generation_prompt:
            ids.append(self.special_id("<|assistant|>"))
        return ids


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` through the ``tokenizers`` library.

    The chat template is chosen from the vocabulary, never from the Jinja template:

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
        self, path: str | Path, *, bos_token_id: int | None, eos_token_ids: tuple[int, ...]
    ) -> None:
        from tokenizers import Tokenizer as _RawTokenizer

        self._tok = _RawTokenizer.from_file(str(path))
        self._bos = bos_token_id
        self._eos = eos_token_ids

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

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
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
    """Stands in for a directory without ``tokenizer.json``: ids work, text raises."""

    def __init__(
        self,
        directory: str | Path,
        *,
        vocab_size: int,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
    ) -> None:
        self._directory = str(directory)
        self._vocab_size = vocab_size
        self._bos = bos_token_id
        self._eos = eos_token_ids

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

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        raise self._unavailable()


def load_tokenizer(model: str) -> Tokenizer:
    """The tokenizer of ``"tiny"`` or of a model directory (see the module docstring)."""
    if model == TINY_MODEL:
        return ByteTokenizer()
    directory = Path(model)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither {TINY_MODEL!r} nor an existing directory"
        )
    bos, eos = read_special_token_ids(directory)
    path = directory / "tokenizer.json"
    if path.is_file():
        return HFTokenizer(path, bos_token_id=bos, eos_token_ids=eos)
    vocab = load_model_spec(model).vocab_size
    return UnavailableTokenizer(directory, vocab_size=vocab, bos_token_id=bos, eos_token_ids=eos)
