"""Loader: the tiny model, HF directory errors, export round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from worker_svc.loader import default_dtype, load_model, save_hf_directory


def test_tiny_is_deterministic(tiny: Any) -> None:
    spec, model = tiny
    spec2, model2 = load_model("tiny")
    assert spec2 == spec and model.dtype == torch.float32 and model.device.type == "cpu"
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    _, half = load_model("tiny", dtype=torch.float16)
    assert half.dtype == torch.float16


def test_export_round_trip(tiny: Any, tmp_path: Path) -> None:
    spec, model = tiny
    save_hf_directory(model, spec, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 4
    spec2, model2 = load_model(str(tmp_path))
    assert spec2.fingerprint != spec.fingerprint
    assert (spec2.num_layers, spec2.eos_token_ids, spec2.bos_token_id) == (
        spec.num_layers,
        spec.eos_token_ids,
        spec.bos_token_id,
    )
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_directory_errors(tiny: Any, tmp_path: Path) -> None:
    spec, model = tiny
    with pytest.raises(FileNotFoundError, match="neither 'tiny' nor an existing directory"):
        load_model(str(tmp_path / "missing"))
    d = save_hf_directory(model, spec, tmp_path / "d")
    (d / "model.safetensors").rename(tmp_path / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        load_model(str(d))
    (tmp_path / "weights.safetensors").rename(d / "model.safetensors")
    (d / "config.json").rename(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_model(str(d))
    config = json.loads((tmp_path / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "architectures": ["PhiForCausalLM"]}))
    with pytest.raises(ValueError, match="unsupported architecture 'PhiForCausalLM'"):
        load_model(str(d))


def test_incomplete_and_misshapen_weights(tiny: Any, tmp_path: Path) -> None:
    spec, model = tiny
    d = save_hf_directory(model, spec, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["lm_head.weight"], tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="2 tensor") as info:
        load_model(str(d))
    assert "lm_head.weight" in str(info.value)
    assert "model.layers.2.mlp.up_proj.weight" in str(info.value)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["lm_head.weight"] = torch.zeros(10, 256)
    tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(512, 256)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lm_head.weight has shape \(10, 256\)"):
        load_model(str(d))
