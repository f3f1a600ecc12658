"""A model directory's Jinja chat template, rendered the way Hugging Face transformers does.

No transformers import: this mirrors ``transformers.utils.chat_template_utils`` (checked against
transformers 5.x) closely enough that the rendered text, and so the token ids, are the same:

* the environment is ``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with
  the ``loopcontrols`` extension and a ``{% generation %}`` tag that renders its body (transformers
  uses it only to track assistant tokens);
* the globals ``raise_exception(message)``, ``strftime_now(format)`` (local time), ``dict`` and a
  ``namespace`` that refuses underscore-prefixed names; the ``tojson`` filter is
  ``json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`` (no HTML
  escaping, unlike Jinja's own);
* the variables are ``messages``, ``add_generation_prompt``, ``tools``, ``documents``, the named
  special tokens of ``tokenizer_config.json`` (``bos_token``, ``eos_token``, ``unk_token``,
  ``sep_token``, ``pad_token``, ``cls_token``, ``mask_token``, plus the names of a dict
  ``extra_special_tokens``), each a string or an AddedToken dict with ``"content"``; a caller's
  extra variables override them, as transformers' kwargs do;
* every message is a plain copy of the caller's mapping with its ``None``-valued keys dropped
  (``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts, passed as
  given: the template decides what to do with them). An empty conversation is a ValueError.

Not mirrored: ``continue_final_message``, ``sanitize_control_tokens`` (control tokens written in a
message's text are recognised when the text is encoded, as with transformers' default), and the
aliasing of reasoning fields (``thinking``/``reasoning`` -> ``reasoning_content``).

Loading (``ChatTemplate.from_directory``), in transformers' order: ``chat_template.jinja`` when
present (the newer layout), else ``tokenizer_config.json``'s ``chat_template``: a string, or a
list of ``{"name", "template"}`` of which the one named ``"default"`` is used. Any template error
(``raise_exception``, a syntax error, an undefined value used, a type error) is a
``ChatTemplateError``, a ``ValueError`` carrying the template's own message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "CHAT_TEMPLATE_FILE",
    "SPECIAL_TOKEN_NAMES",
    "ChatTemplate",
    "ChatTemplateError",
    "read_special_tokens",
]

CHAT_TEMPLATE_FILE = "chat_template.jinja"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_SPECIAL_TOKENS_MAP = "special_tokens_map.json"
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named special tokens a template sees
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Errors a template can raise while rendering besides jinja2's own (e.g. ``'a' + 1``).
_RENDER_ERRORS = (
    jinja2.TemplateError,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,
    RecursionError,
)


class ChatTemplateError(ValueError):
    """A chat template failed: raised by the template, a syntax error, or bad input for it."""


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict`` inside templates: builds plain dicts, exposes nothing else."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace`` inside templates: refuses underscore-prefixed attributes (no dunder access)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot set underscore-prefixed namespace attributes: {name!r}"
            )


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged."""

    tags = {"generation"}  # read by Jinja

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return str(caller())


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


def _plain(value: Any) -> Any:
    """A copy of ``value`` built only of JSON-like types (what transformers lets a template see);
    anything else becomes a ``"<TypeName>"`` placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ChatTemplateError(
            f"messages must be a list of mappings, got {type(messages).__name__}"
        )
    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"message {index} is not a mapping: {message!r}")
        out.append({k: _plain(v) for k, v in message.items() if v is not None})
    return out


def _token_text(value: Any, *, key: str, origin: Path) -> str | None:
    """A special token's text: a string, an AddedToken dict's ``content``, or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise ChatTemplateError(f"{origin}: {key} must be a string or have a 'content', got {value!r}")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ChatTemplateError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise ChatTemplateError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_special_tokens(directory: str | Path) -> dict[str, Any]:
    """The special-token variables a directory's template sees, as transformers sets them.

    ``tokenizer_config.json``'s named tokens (``SPECIAL_TOKEN_NAMES``) and, when
    ``extra_special_tokens`` is a dict (model-specific tokens), each of its names. Like
    transformers, a config without ``added_tokens_decoder`` (the legacy layout) takes
    ``special_tokens_map.json``'s values over its own. Missing files give ``{}``.
    """
    directory = Path(directory)
    config_path = directory / _TOKENIZER_CONFIG
    config = _read_json_object(config_path) if config_path.is_file() else {}
    sources = [(config_path, config)]
    map_path = directory / _SPECIAL_TOKENS_MAP
    if "added_tokens_decoder" not in config and map_path.is_file():
        sources.append((map_path, _read_json_object(map_path)))
    tokens: dict[str, Any] = {}
    for path, data in sources:  # later sources win
        for key in SPECIAL_TOKEN_NAMES:
            text = _token_text(data.get(key), key=key, origin=path)
            if text is not None:
                tokens[key] = text
        extra = data.get("extra_special_tokens")
        if isinstance(extra, Mapping):
            for name, value in extra.items():
                text = _token_text(value, key=str(name), origin=path)
                if text is not None:
                    tokens[str(name)] = text
    return tokens


class ChatTemplate:
    """One compiled chat template plus the special tokens it sees; renders conversations to text.

    Immutable after construction (the compiled template is shared by every ``render``), so one
    instance may be used from many threads. A syntax error is raised here, not on first use.
    """

    def __init__(
        self,
        source: str,
        *,
        special_tokens: Mapping[str, Any] | None = None,
        origin: str = "chat template",
    ) -> None:
        if not isinstance(source, str) or not source:
            raise ChatTemplateError(f"{origin}: a chat template must be a non-empty string")
        self._source = source
        self._origin = origin
        self._special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"{origin}: syntax error at line {exc.lineno}: {exc.message}"
            ) from exc

    @property
    def source(self) -> str:
        """The template's Jinja text."""
        return self._source

    @property
    def origin(self) -> str:
        """Where the template came from (a file path and key, or a caller's label)."""
        return self._origin

    @property
    def special_tokens(self) -> dict[str, Any]:
        """The special-token variables (``bos_token``, ...) every rendering sees."""
        return dict(self._special_tokens)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The conversation's text, exactly as ``tokenizer.apply_chat_template(...,
        tokenize=False)`` renders it. ``variables`` override the special tokens (transformers'
        extra kwargs). Raises ``ChatTemplateError`` with the template's message."""
        context: dict[str, Any] = {**self._special_tokens, **_plain(dict(variables or {}))}
        context.update(
            messages=_messages(messages),
            tools=None if tools is None else _plain(list(tools)),
            documents=None if documents is None else _plain(list(documents)),
            add_generation_prompt=bool(add_generation_prompt),
        )
        try:
            return self._template.render(**context)
        except _RENDER_ERRORS as exc:
            message = exc.message if isinstance(exc, jinja2.TemplateError) else repr(exc)
            raise ChatTemplateError(f"{self._origin}: {message}") from exc

    @classmethod
    def from_directory(cls, directory: str | Path) -> ChatTemplate | None:
        """The directory's template (see the module docstring), or None when it has none."""
        directory = Path(directory)
        special = read_special_tokens(directory)
        jinja_path = directory / CHAT_TEMPLATE_FILE
        if jinja_path.is_file():
            try:
                source = jinja_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ChatTemplateError(f"{jinja_path}: cannot read: {exc}") from exc
            return cls(source, special_tokens=special, origin=str(jinja_path))
        config_path = directory / _TOKENIZER_CONFIG
        if not config_path.is_file():
            return None
        value = _read_json_object(config_path).get("chat_template")
        if value is None:
            return None
        origin = f"{config_path} chat_template"
        return cls(_pick_template(value, origin), special_tokens=special, origin=origin)


def _pick_template(value: Any, origin: str) -> str:
    """A config's ``chat_template``: the string itself, or the ``"default"`` of a named list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = dict(_named_templates(value, origin))
        if "default" in named:
            return named["default"]
        raise ChatTemplateError(
            f"{origin}: several templates and none named 'default': {sorted(named)}"
        )
    raise ChatTemplateError(f"{origin}: expected a string or a list, got {type(value).__name__}")


def _named_templates(entries: list[Any], origin: str) -> Iterator[tuple[str, str]]:
    for entry in entries:
        if not (
            isinstance(entry, Mapping)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("template"), str)
        ):
            raise ChatTemplateError(f"{origin}: entries need a 'name' and a 'template': {entry!r}")
        yield entry["name"], entry["template"]
