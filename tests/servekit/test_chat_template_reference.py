"""Reference tests: our chat rendering against transformers' ``apply_chat_template`` on the same
directories (transformers is a dev dependency, used only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chat_dirs import (
    ALTERNATING_TEMPLATE,
    CHATML_SPECIALS,
    CHATML_TEMPLATE,
    LLAMA3_SPECIALS,
    LLAMA3_TEMPLATE,
    PARTS_TEMPLATE,
    PLAIN_SPECIALS,
    THINK_TEMPLATE,
    make_tokenizer_dir,
)

from servekit.chat_template import ChatTemplateError
from servekit.tokenizer import HFTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")

SYSTEM = {"role": "system", "content": "be brief and kind."}
USER = {"role": "user", "content": "hello world, how are you today?"}
ASSISTANT = {"role": "assistant", "content": " I am fine, thank you!\n"}
USER2 = {"role": "user", "content": "and you? <|eot_id|> <|im_end|>"}  # specials in user text
PARTS_USER: dict[str, Any] = {
    "role": "user",
    "name": "Zoë <b>",
    "content": [
        {"type": "text", "text": "the quick "},
        {"type": "image"},
        {"type": "text", "text": "brown fox"},
        {"type": "stop"},
        {"type": "text", "text": "never shown"},
    ],
}
ASSISTANT_NONE_KEYS: dict[str, Any] = {"role": "assistant", "content": "Great.", "tool_calls": None}

CONVERSATIONS = [
    [USER],
    [SYSTEM, USER],
    [SYSTEM, USER, ASSISTANT, USER2],
    [USER, ASSISTANT, USER2],
]

# name -> (specials, bos, eos, where the template goes, template)
DIRS: dict[str, tuple[list[str], str | None, str, str, Any]] = {
    "llama3": (LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>", "config", LLAMA3_TEMPLATE),
    "chatml": (CHATML_SPECIALS, None, "<|im_end|>", "jinja", CHATML_TEMPLATE),
    "think": ([*CHATML_SPECIALS, "<think>", "</think>"], None, "<|im_end|>", "config",
              THINK_TEMPLATE),
    "parts": (PLAIN_SPECIALS, "<s>", "</s>", "config", PARTS_TEMPLATE),
    "alternating": (PLAIN_SPECIALS, "<s>", "</s>", "config",
                    [{"name": "default", "template": ALTERNATING_TEMPLATE},
                     {"name": "tool_use", "template": "unused"}]),
}  # fmt: skip


def build(tmp_path: Path, name: str) -> tuple[HFTokenizer, Any]:
    specials, bos, eos, where, template = DIRS[name]
    d = make_tokenizer_dir(
        tmp_path / name,
        specials=specials,
        bos=bos,
        eos=eos,
        template=template if where == "config" else None,
        jinja_file=template if where == "jinja" else None,
        bos_as_added_token=name == "llama3",
    )
    ours = load_tokenizer(str(d))
    assert isinstance(ours, HFTokenizer) and ours.chat_template is not None
    return ours, transformers.AutoTokenizer.from_pretrained(str(d))


def reference(hf: Any, messages: list[dict[str, Any]], gen: bool) -> tuple[str, list[int]]:
    text = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
    ids = hf.apply_chat_template(messages, add_generation_prompt=gen, tokenize=True,
                                 return_dict=False)  # fmt: skip
    return text, list(ids)


@pytest.mark.parametrize("name", ["llama3", "chatml", "think"])
def test_matches_transformers(tmp_path: Path, name: str) -> None:
    ours, hf = build(tmp_path, name)
    assert ours.chat_template is not None
    for messages in CONVERSATIONS:
        for gen in (False, True):
            text, ids = reference(hf, messages, gen)
            assert ours.chat_template.render(messages, add_generation_prompt=gen) == text
            assert ours.render_chat(messages, add_generation_prompt=gen) == ids
    # the special tokens written in the user's text are recognised, as transformers does
    assert ours.render_chat([USER2]).count(ours.eos_token_ids[0]) >= 2


def test_parts_and_system_match_transformers(tmp_path: Path) -> None:
    ours, hf = build(tmp_path, "parts")
    for messages in ([SYSTEM, PARTS_USER], [SYSTEM, PARTS_USER, ASSISTANT_NONE_KEYS, USER]):
        for gen in (False, True):
            text, ids = reference(hf, messages, gen)
            assert ours.render_chat(messages, add_generation_prompt=gen) == ids
            assert "never shown" not in text and '"Zoë <b>"' in text  # break, plain tojson
    assert ASSISTANT_NONE_KEYS["tool_calls"] is None


def test_raise_exception_matches_transformers(tmp_path: Path) -> None:
    ours, hf = build(tmp_path, "alternating")
    good = [USER, ASSISTANT, USER2]
    assert ours.render_chat(good, add_generation_prompt=False) == reference(hf, good, False)[1]
    for bad in ([USER, USER2], [ASSISTANT], [SYSTEM, USER]):
        with pytest.raises(Exception) as theirs:
            hf.apply_chat_template(bad, tokenize=False)
        with pytest.raises(ChatTemplateError) as mine:
            ours.render_chat(bad)
        assert str(theirs.value) in str(mine.value)
