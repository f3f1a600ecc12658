"""Tests of servekit.tokenizer: the byte tokenizer, HF tokenizer.json, missing tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from servekit.tokenizer import (
    ByteTokenizer,
    HFTokenizer,
    TokenizerUnavailableError,
    UnavailableTokenizer,
    load_tokenizer,
)

CORPUS = ["hello world", "the quick brown fox", "user assistant system", "héllo wörld ✓"] * 20


def make_model_dir(path: Path, specials: list[str] | None) -> Path:
    """A model directory with a config, fake weights and, unless ``specials`` is None, a
    byte-level BPE ``tokenizer.json`` with those special tokens."""
    path.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 400,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    (path / "config.json").write_text(json.dumps(config))
    save_file({"x": torch.zeros(2)}, str(path / "model.safetensors"))
    if specials is not None:
        tok = RawTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=350,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(CORPUS, trainer)
        tok.save(str(path / "tokenizer.json"))
    return path


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([0xE2, 0x9C]) == "\ufffd"  # a cut multi-byte character is replaced
    assert tok.decode([*b"a", tok.special_id("<|end|>"), *b"b"]) == "a<|end|>b"
    assert tok.vocab_size == 262 and tok.bos_token_id == 256
    assert set(tok.eos_token_ids) == {257, 261}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([262])


def test_byte_chat_template() -> None:
    tok = ByteTokenizer()
    ids = tok.apply_chat_template([("system", "be brief"), ("user", "hi")])
    sid = tok.special_id
    assert ids == [
        256,
        sid("<|system|>"),
        *b"be brief",
        sid("<|end|>"),
        sid("<|user|>"),
        *b"hi",
        sid("<|end|>"),
        sid("<|assistant|>"),
    ]
    assert tok.apply_chat_template([("user", "hi")], add_generation_prompt=False)[-1] == sid(
        "<|end|>"
    )
    with pytest.raises(ValueError, match="unknown chat role"):
        tok.apply_chat_template([("robot", "x")])


def test_load_tiny_tokenizer_matches_spec() -> None:
    from servekit.modelspec import tiny_model_spec

    tok = load_tokenizer("tiny")
    spec = tiny_model_spec()
    assert isinstance(tok, ByteTokenizer)
    assert tok.vocab_size == spec.vocab_size
    assert tok.bos_token_id == spec.bos_token_id and tok.eos_token_ids == spec.eos_token_ids


def test_hf_tokenizer_chatml(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "m", ["<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    tok = load_tokenizer(str(d))
    assert isinstance(tok, HFTokenizer)
    assert tok.bos_token_id == 0 and tok.eos_token_ids == (1,)
    ids = tok.encode("hello world")
    assert ids and tok.decode(ids) == "hello world"
    assert tok.decode(tok.encode("héllo ✓")) == "héllo ✓"
    chat = tok.apply_chat_template([("user", "hello")])
    text = tok.decode(chat)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_hf_tokenizer_generic_template(tmp_path: Path) -> None:
    tok = load_tokenizer(str(make_model_dir(tmp_path / "m", ["<s>", "</s>"])))
    chat = tok.apply_chat_template([("user", "hello")])
    assert chat[0] == 0  # bos
    assert tok.decode(chat[1:]) == "user: hello\nassistant:"


def test_directory_without_tokenizer_json(tmp_path: Path) -> None:
    tok = load_tokenizer(str(make_model_dir(tmp_path / "m", None)))
    assert isinstance(tok, UnavailableTokenizer)
    assert tok.vocab_size == 400 and tok.eos_token_ids == (1,)
    for call in (
        lambda: tok.encode("x"),
        lambda: tok.decode([1]),
        lambda: tok.apply_chat_template([]),
    ):
        with pytest.raises(TokenizerUnavailableError, match=r"no tokenizer\.json"):
            call()
    with pytest.raises(FileNotFoundError):
        load_tokenizer(str(tmp_path / "missing"))
