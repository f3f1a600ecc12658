"""Tests of servekit.modelspec: the tiny spec, HF config parsing, errors and fingerprints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from servekit.modelspec import (
    SUPPORTED_ARCHITECTURES,
    ModelSpec,
    RopeScaling,
    load_model_spec,
    tiny_model_spec,
)

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 300,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def write_dir(path: Path, config: dict[str, Any] | None, *, weights: bool = True) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if weights:
        save_file({"x": torch.arange(8, dtype=torch.float32)}, str(path / "model.safetensors"))
    return path


def test_tiny_spec_shapes() -> None:
    spec = load_model_spec("tiny")
    assert spec == tiny_model_spec()
    assert spec.num_heads % spec.num_kv_heads == 0 and spec.num_kv_heads < spec.num_heads
    assert spec.vocab_size >= 256 + 6
    assert spec.block_bytes(16, 4) == spec.num_layers * 2 * 16 * spec.num_kv_heads * 32 * 4
    assert spec.kv_bytes_per_token(2) * 16 == spec.block_bytes(16, 2)
    assert spec.fingerprint == tiny_model_spec().fingerprint
    assert hash(spec) == hash(tiny_model_spec())


def test_llama_v4_config(tmp_path: Path) -> None:
    write_dir(tmp_path / "m", LLAMA_CONFIG)
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 9]}))
    spec = load_model_spec(str(tmp_path / "m"))
    assert (spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.head_dim) == (2, 4, 2, 16)
    assert spec.rope_theta == 500000.0 and spec.rope_scaling is None
    assert spec.max_model_len == 512 and spec.rms_norm_eps == 1e-5
    assert spec.bos_token_id == 1 and spec.eos_token_ids == (2, 9)
    assert not spec.attention_bias and not spec.tie_word_embeddings
    assert spec.name == "m" and spec.architecture == "LlamaForCausalLM"


def test_rope_scaling_v4_and_v5_keys(tmp_path: Path) -> None:
    llama3 = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    v4 = {**LLAMA_CONFIG, "rope_scaling": {"rope_type": "llama3", **llama3}}
    v5 = {k: v for k, v in LLAMA_CONFIG.items() if k != "rope_theta"}
    v5["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, **llama3}
    a = load_model_spec(str(write_dir(tmp_path / "a", v4)))
    b = load_model_spec(str(write_dir(tmp_path / "b", v5)))
    assert a.rope_scaling == b.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 64)
    assert a.rope_theta == b.rope_theta == 500000.0
    linear = {**LLAMA_CONFIG, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert load_model_spec(str(write_dir(tmp_path / "c", linear))).rope_scaling == RopeScaling(
        "linear", 2.0
    )


def test_qwen2_has_bias_by_default(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "architectures": ["Qwen2ForCausalLM"], "tie_word_embeddings": True}
    spec = load_model_spec(str(write_dir(tmp_path / "q", config)))
    assert spec.attention_bias and spec.tie_word_embeddings


def test_fingerprint_follows_weights_and_config(tmp_path: Path) -> None:
    a = load_model_spec(str(write_dir(tmp_path / "a", LLAMA_CONFIG)))
    same = load_model_spec(str(write_dir(tmp_path / "b", LLAMA_CONFIG)))
    assert a.fingerprint == load_model_spec(str(tmp_path / "a")).fingerprint
    assert a.fingerprint == same.fingerprint  # a copy elsewhere is the same model
    # Same shapes, different weight values: a sampled byte differs.
    d = write_dir(tmp_path / "d", LLAMA_CONFIG, weights=False)
    save_file({"x": torch.arange(8, dtype=torch.float32) + 1}, str(d / "model.safetensors"))
    assert load_model_spec(str(d)).source_digest != a.source_digest
    e = write_dir(tmp_path / "e", {**LLAMA_CONFIG, "rope_theta": 10000.0})
    assert load_model_spec(str(e)).fingerprint != a.fingerprint
    assert a.fingerprint != tiny_model_spec().fingerprint


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, ValueError, "GPT2LMHeadModel.*supported"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": 4096}, ValueError, "sliding"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, ValueError, "rope_scaling type 'yarn'"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, ValueError, "dynamic"),
        ({"num_key_value_heads": 3}, ValueError, "multiple"),
        ({"hidden_size": None}, ValueError, "lacks required key 'hidden_size'"),
        ({"num_hidden_layers": "2"}, ValueError, "num_hidden_layers must be an integer"),
    ],
)
def test_unsupported_configs(
    tmp_path: Path, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    config = {**LLAMA_CONFIG, **change}
    with pytest.raises(error, match=match):
        load_model_spec(str(write_dir(tmp_path / "m", config)))


def test_supported_architectures_listed_in_error(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "architectures": ["FalconForCausalLM"]}
    with pytest.raises(ValueError) as info:
        load_model_spec(str(write_dir(tmp_path / "m", config)))
    assert all(name in str(info.value) for name in SUPPORTED_ARCHITECTURES)


def test_mistral_without_window_is_supported(tmp_path: Path) -> None:
    config = {**LLAMA_CONFIG, "architectures": ["MistralForCausalLM"], "sliding_window": None}
    assert load_model_spec(str(write_dir(tmp_path / "m", config))).architecture == (
        "MistralForCausalLM"
    )


def test_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither 'tiny' nor an existing directory"):
        load_model_spec(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_model_spec(str(write_dir(tmp_path / "a", None)))
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        load_model_spec(str(write_dir(tmp_path / "b", LLAMA_CONFIG, weights=False)))
    c = write_dir(tmp_path / "c", LLAMA_CONFIG, weights=False)
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors"}}
    (c / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="missing shard"):
        load_model_spec(str(c))
    d = write_dir(tmp_path / "d", None)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_spec(str(d))


def test_spec_validation() -> None:
    base = tiny_model_spec()
    with pytest.raises(ValueError, match="num_layers"):
        ModelSpec(**{**base.__dict__, "num_layers": 0})
    with pytest.raises(ValueError, match="rope_scaling type"):
        RopeScaling("yarn", 2.0)
    with pytest.raises(ValueError, match="llama3"):
        RopeScaling("llama3", 2.0)
