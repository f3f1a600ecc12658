"""Tests of servekit.chat_template and the tokenizers' chat rendering: HF conventions, loading,
the tiny model's Jinja template, special tokens in rendered text, and reuse across turns."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from chat_dirs import (
    CHATML_SPECIALS,
    CHATML_TEMPLATE,
    LLAMA3_SPECIALS,
    LLAMA3_TEMPLATE,
    THINK_TEMPLATE,
    make_tokenizer_dir,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from servekit.chat_template import ChatTemplate, ChatTemplateError, read_special_tokens
from servekit.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

USER = {"role": "user", "content": "hello world"}


def render(source: str, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return ChatTemplate(source, special_tokens={"bos_token": "<s>"}).render(messages, **kwargs)


# --- HF conventions ------------------------------------------------------------------------


def test_trim_and_lstrip_blocks() -> None:
    source = "  {% for m in messages %}\n[{{ m.role }}]\n  {% endfor %}\n"
    assert render(source, [USER, USER]) == "[user]\n[user]\n"


def test_variables_and_generation_prompt() -> None:
    source = "{{ bos_token }}{{ tools }}{{ documents }}{% if add_generation_prompt %}GO{% endif %}"
    assert render(source, [USER]) == "<s>NoneNone"
    assert render(source, [USER], add_generation_prompt=True) == "<s>NoneNoneGO"
    assert render(source, [USER], variables={"bos_token": "<b>"}) == "<b>NoneNone"


def test_tojson_is_plain_json() -> None:
    source = "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=1, sort_keys=True) }}"
    message = {"role": "user", "content": "Zoë <b>&</b>"}
    compact, indented = render(source, [message]).split("|")
    assert compact == json.dumps(message, ensure_ascii=False)  # no HTML escaping, no \\u
    assert indented == json.dumps(message, ensure_ascii=False, indent=1, sort_keys=True)


def test_strftime_now_and_loopcontrols() -> None:
    before = datetime.now().strftime("%Y-%m-%d")
    text = render("{{ strftime_now('%Y-%m-%d') }}", [USER])
    assert text in (before, datetime.now().strftime("%Y-%m-%d"))
    source = "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}"
    source += "{% if loop.index0 == 3 %}{% break %}{% endif %}{{ loop.index0 }}{% endfor %}"
    assert render(source, [USER] * 5) == "02"


def test_generation_tag_renders_its_body() -> None:
    source = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert render(source, [USER, {"role": "assistant", "content": "!"}]) == "hello world!"


def test_messages_are_passed_as_given_without_none_keys() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    message = {"role": "user", "content": parts, "tool_calls": None}
    source = (
        "{{ messages[0].tool_calls is defined }}"
        "{% for p in messages[0].content %}{{ p.type }}:{{ p.text }};{% endfor %}"
    )
    assert render(source, [message]) == "Falsetext:a;image:;text:b;"
    assert message["tool_calls"] is None  # the caller's message is not changed


def test_template_errors_are_value_errors_with_the_message() -> None:
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}", [USER])
    with pytest.raises(ChatTemplateError, match="has no attribute 'missing'"):
        render("{{ messages[0].missing.deeper }}", [USER])
    with pytest.raises(ChatTemplateError, match="line 2"):
        ChatTemplate("ok\n{% for %}")
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        render("x", [])
    with pytest.raises(ChatTemplateError, match="not a mapping"):
        render("x", ["user: hi"])  # type: ignore[list-item]
    assert issubclass(ChatTemplateError, ValueError)


def test_sandbox_refuses_mutation_and_private_names() -> None:
    with pytest.raises(ChatTemplateError, match="underscore"):
        render("{% set ns = namespace(_x=1) %}", [USER])
    with pytest.raises(ChatTemplateError):
        render("{{ messages.append(1) }}", [USER])  # immutable sandbox
    with pytest.raises(ChatTemplateError):
        render("{{ messages.__class__ }}{{ ''.__class__.__mro__ }}", [USER])


# --- loading -------------------------------------------------------------------------------


def test_jinja_file_wins_over_config(tmp_path: Path) -> None:
    d = make_tokenizer_dir(
        tmp_path / "m", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>",
        template="CONFIG", jinja_file="FILE {{ eos_token }}",
    )  # fmt: skip
    template = ChatTemplate.from_directory(d)
    assert template is not None and template.render([USER]) == "FILE <|im_end|>"
    assert template.origin.endswith("chat_template.jinja")


def test_named_templates_use_default(tmp_path: Path) -> None:
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEF"}]
    d = make_tokenizer_dir(tmp_path / "a", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>",
                           template=named)  # fmt: skip
    template = ChatTemplate.from_directory(d)
    assert template is not None and template.source == "DEF"
    d = make_tokenizer_dir(tmp_path / "b", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>",
                           template=named[:1])  # fmt: skip
    with pytest.raises(ChatTemplateError, match=r"none named 'default': \['tool_use'\]"):
        ChatTemplate.from_directory(d)


def test_no_template_is_none(tmp_path: Path) -> None:
    assert ChatTemplate.from_directory(tmp_path) is None
    d = make_tokenizer_dir(tmp_path / "m", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>")
    assert ChatTemplate.from_directory(d) is None


def test_special_tokens_from_config_and_legacy_map(tmp_path: Path) -> None:
    d = make_tokenizer_dir(
        tmp_path / "m", specials=LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>",
        bos_as_added_token=True,
    )  # fmt: skip
    assert read_special_tokens(d) == {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    (d / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": {"content": "<|end_of_text|>"}, "eos_token": "<|end_of_text|>"})
    )
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = {"image_token": "<image>"}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_special_tokens(d) == {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",  # the legacy map wins, as in transformers
        "pad_token": "<|end_of_text|>",
        "image_token": "<image>",
    }
    config["added_tokens_decoder"] = {}  # the newer layout: the map is not read
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_special_tokens(d)["eos_token"] == "<|eot_id|>"
    config["bos_token"] = 7
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match="bos_token must be a string"):
        read_special_tokens(d)


def test_broken_template_fails_at_load(tmp_path: Path) -> None:
    d = make_tokenizer_dir(tmp_path / "m", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>",
                           jinja_file="{% if %}")  # fmt: skip
    with pytest.raises(ChatTemplateError, match=r"chat_template\.jinja: syntax error at line 1"):
        load_tokenizer(str(d))


# --- the tiny model ------------------------------------------------------------------------


def old_byte_chat(tok: ByteTokenizer, messages: list[tuple[str, str]], gen: bool) -> list[int]:
    """The tiny model's chat ids before it had a Jinja template (they must not change)."""
    ids = [tok.bos_token_id]
    for role, content in messages:
        ids += [tok.special_id(f"<|{role}|>"), *tok.encode(content), tok.special_id("<|end|>")]
    return [*ids, tok.special_id("<|assistant|>")] if gen else ids


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=20)),
        min_size=1,
        max_size=5,
    ),
    gen=st.booleans(),
)
def test_tiny_template_gives_the_old_ids(messages: list[tuple[str, str]], gen: bool) -> None:
    tok = ByteTokenizer()
    # text that spells a special's name would now become that special, as with HF tokenizers
    clean = [(r, c.replace("<", "(")) for r, c in messages]
    assert tok.apply_chat_template(clean, add_generation_prompt=gen) == old_byte_chat(
        tok, clean, gen
    )


def test_tiny_render_chat_content_parts_and_errors() -> None:
    tok = ByteTokenizer()
    parts = [{"type": "text", "text": "hi "}, {"type": "image"}, {"type": "text", "text": "you"}]
    assert tok.render_chat([{"role": "user", "content": parts}]) == tok.apply_chat_template(
        [("user", "hi you")]
    )
    assert tok.chat_template_text is not None and "<|assistant|>" in tok.chat_template_text
    with pytest.raises(ValueError, match="unknown chat role 'robot'"):
        tok.render_chat([{"role": "robot", "content": "x"}])


def test_byte_encode_with_specials() -> None:
    tok = ByteTokenizer()
    text = "a<|user|>b<bos><|end|><|nope|>"
    assert tok.encode(text) == list(text.encode())  # plain prompts keep their meaning
    assert tok.encode_with_specials(text) == [
        *b"a", tok.special_id("<|user|>"), *b"b", 256, tok.special_id("<|end|>"), *b"<|nope|>"
    ]  # fmt: skip
    assert tok.decode(tok.encode_with_specials(text)) == text
    assert tok.encode_prompt("<bos>x") == [256, *b"<bos>x"]


# --- HF directories ------------------------------------------------------------------------


def llama3_dir(path: Path, template: str = LLAMA3_TEMPLATE) -> Path:
    return make_tokenizer_dir(path, specials=LLAMA3_SPECIALS, bos="<|begin_of_text|>",
                              eos="<|eot_id|>", template=template)  # fmt: skip


def test_hf_directory_template_is_used(tmp_path: Path) -> None:
    tok = load_tokenizer(str(llama3_dir(tmp_path / "m")))
    assert isinstance(tok, HFTokenizer) and tok.chat_template_text == LLAMA3_TEMPLATE
    ids = tok.apply_chat_template([("user", " hi ")])
    assert ids == tok.render_chat([{"role": "user", "content": " hi "}])
    assert tok.decode(ids) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ids[0] == tok.bos_token_id and ids.count(tok.eos_token_ids[0]) == 1


# --- reuse across turns --------------------------------------------------------------------

REPLIES = ["I am fine, thank you!", "the quick brown fox.", "Zoë said héllo ✓", "Great."]
QUESTIONS = ["hello world, how are you today?", "and you?", "be brief", "twice"]


def conversation_turns(tok: Tokenizer, end_of_turn: int) -> list[tuple[list[int], list[int]]]:
    """(prompt_k, r_k) per turn, r_k = the reply's own ids then the end-of-turn token."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief and kind."}]
    turns = []
    for question, reply in zip(QUESTIONS, REPLIES, strict=True):
        messages.append({"role": "user", "content": question})
        prompt = tok.render_chat(messages, add_generation_prompt=True)
        turns.append((prompt, [*tok.encode(reply), end_of_turn]))
        messages.append({"role": "assistant", "content": reply})
    return turns


def assert_turns_reuse(turns: list[tuple[list[int], list[int]]]) -> None:
    for (prompt, reply), (next_prompt, _) in itertools.pairwise(turns):
        assert next_prompt[: len(prompt) + len(reply)] == prompt + reply


def test_reuse_tiny_template() -> None:
    tok = ByteTokenizer()
    assert_turns_reuse(conversation_turns(tok, tok.special_id("<|end|>")))


def test_reuse_llama3_template(tmp_path: Path) -> None:
    tok = load_tokenizer(str(llama3_dir(tmp_path / "m")))
    (eot,) = tok.eos_token_ids
    turns = conversation_turns(tok, eot)
    assert all(len(tok.encode(r)) > 1 for r in REPLIES)  # multi-token replies, not trivial
    assert_turns_reuse(turns)


def test_reuse_chatml_template(tmp_path: Path) -> None:
    d = make_tokenizer_dir(tmp_path / "m", specials=CHATML_SPECIALS, bos=None, eos="<|im_end|>",
                           template=CHATML_TEMPLATE)  # fmt: skip
    tok = load_tokenizer(str(d))
    (im_end,) = tok.eos_token_ids
    assert_turns_reuse(conversation_turns(tok, im_end))


def test_rewriting_template_reuses_only_the_common_prefix(tmp_path: Path) -> None:
    d = make_tokenizer_dir(tmp_path / "m", specials=[*CHATML_SPECIALS, "<think>", "</think>"],
                           bos=None, eos="<|im_end|>", template=THINK_TEMPLATE)  # fmt: skip
    tok = load_tokenizer(str(d))
    (im_end,) = tok.eos_token_ids
    history: list[dict[str, Any]] = [USER]
    prompt = tok.render_chat(history)
    reply_text = "<think>\nhmm\n</think>\n\nGreat."
    reply = [*tok.encode(reply_text), im_end]
    history += [{"role": "assistant", "content": reply_text}, {"role": "user", "content": "and?"}]
    next_prompt = tok.render_chat(history)
    assert next_prompt[: len(prompt)] == prompt  # the prompt itself is still a prefix
    assert next_prompt[: len(prompt) + len(reply)] != prompt + reply  # the reply is rewritten


def assert_continuation_is_the_full_rendering(tok: Tokenizer, end_of_turn: int) -> None:
    """What the scheduler's Chat API does: history ids + ``continue_chat`` of the new message."""
    turns = conversation_turns(tok, end_of_turn)
    for (prompt, reply), (next_prompt, _), question in zip(
        turns, turns[1:], QUESTIONS[1:], strict=False
    ):
        assert [*prompt, *reply, *tok.continue_chat([("user", question)])] == next_prompt


def test_continue_chat_tiny() -> None:
    tok = ByteTokenizer()
    assert_continuation_is_the_full_rendering(tok, tok.special_id("<|end|>"))
    ids = tok.continue_chat([("user", "hi")])
    assert ids == tok.apply_chat_template([("user", "hi")])[1:]  # as before: no second <bos>


def test_continue_chat_llama3_and_chatml(tmp_path: Path) -> None:
    llama = load_tokenizer(str(llama3_dir(tmp_path / "llama")))
    assert_continuation_is_the_full_rendering(llama, llama.eos_token_ids[0])
    d = make_tokenizer_dir(tmp_path / "qwen", specials=CHATML_SPECIALS, bos=None,
                           eos="<|im_end|>", template=CHATML_TEMPLATE)  # fmt: skip
    chatml = load_tokenizer(str(d))
    assert_continuation_is_the_full_rendering(chatml, chatml.eos_token_ids[0])
    # the default system message is not repeated, the newline after <|im_end|> is kept
    text = chatml.decode(chatml.continue_chat([("user", "hi")], add_generation_prompt=False))
    assert text == "\n<|im_start|>user\nhi<|im_end|>\n"


def test_llama3_trim_reuses_only_the_prompt_for_padded_replies(tmp_path: Path) -> None:
    tok = load_tokenizer(str(llama3_dir(tmp_path / "m")))
    prompt = tok.render_chat([USER])
    padded = " Great.\n"
    reply = [*tok.encode(padded), tok.eos_token_ids[0]]
    turn = [USER, {"role": "assistant", "content": padded}, {"role": "user", "content": "and?"}]
    next_prompt = tok.render_chat(turn)
    assert next_prompt[: len(prompt)] == prompt
    assert next_prompt[: len(prompt) + len(reply)] != prompt + reply  # trimmed to "Great."
