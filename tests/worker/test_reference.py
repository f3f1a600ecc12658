"""Our model against transformers, the independent numerical reference.

Random HF models (Llama, Qwen2 with q/k/v bias and GQA 4, Llama 3 RoPE scaling, a sharded
checkpoint) are saved with ``save_pretrained`` and loaded through our loader. Greedy token
equality is checked in **float64 on both sides** (the fp32 weights converted exactly), so it
cannot be decided by float noise on any CPU; the fp32 path is checked separately by logits
closeness. Our side runs batched and chunked through the paged pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fastswitch.offline import generate_offline
from worker_svc.kv_pool import KVPool
from worker_svc.loader import load_model, save_hf_directory
from worker_svc.model import ChunkInput, build_step_batch

transformers = pytest.importorskip("transformers")

NEW_TOKENS = 64
PROMPTS = [[5, 17, 42], [100, 3, 7, 250, 9, 11, 12, 13, 99, 1, 2, 64, 65], list(range(30, 70))]


def hf_model(arch: str, path: Path, *, max_shard_size: str | None = None, **extra: Any) -> Any:
    """A seeded random HF model saved (fp32 safetensors) at ``path``; returned in float64."""
    common: dict[str, Any] = {
        "vocab_size": 300,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "max_position_embeddings": 256,
        "initializer_range": 0.1,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    common.update(extra)
    torch.manual_seed(0)
    if arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(config)
    else:
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # HF zeroes biases and sets norms to one: make them informative
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, 0.5)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(path), **kwargs)
    return model.double().eval()


def hf_greedy(model: Any, prompt: list[int]) -> list[int]:
    model.generation_config.eos_token_id = None  # run to NEW_TOKENS, as ignore_eos does
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
        )
    new = out[0, len(prompt) :].tolist()
    assert len(new) == NEW_TOKENS
    return new


def assert_greedy_matches(hf: Any, path: Path, *, prefill_chunk: int | None = 5) -> None:
    loaded = load_model(str(path), dtype=torch.float64)
    ours = generate_offline(
        loaded, PROMPTS, max_tokens=NEW_TOKENS, ignore_eos=True, prefill_chunk=prefill_chunk
    )
    for prompt, result in zip(PROMPTS, ours, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt)


def test_llama_gqa_greedy_matches_transformers(tmp_path: Path) -> None:
    hf = hf_model("llama", tmp_path, num_attention_heads=4, num_key_value_heads=2)
    assert_greedy_matches(hf, tmp_path)


def test_qwen2_bias_gqa4_tied_sharded_matches_transformers(tmp_path: Path) -> None:
    hf = hf_model(
        "qwen2",
        tmp_path,
        max_shard_size="100KB",
        num_attention_heads=8,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert any(p.name.endswith("self_attn.q_proj.bias") for p in [Path(n) for n in _names(hf)])
    loaded_spec, _ = load_model(str(tmp_path))
    assert loaded_spec.attention_bias and loaded_spec.tie_word_embeddings
    assert_greedy_matches(hf, tmp_path, prefill_chunk=None)


def test_llama3_rope_scaling_matches_transformers(tmp_path: Path) -> None:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    hf = hf_model("llama", tmp_path, num_attention_heads=4, rope_parameters=rope)
    spec, _ = load_model(str(tmp_path))
    assert spec.rope_scaling is not None and spec.rope_scaling.rope_type == "llama3"
    assert_greedy_matches(hf, tmp_path)


def test_fp32_logits_close_to_transformers(tmp_path: Path) -> None:
    hf = hf_model("llama", tmp_path, num_attention_heads=4, num_key_value_heads=2).float()
    spec, model = load_model(str(tmp_path))
    prompt = PROMPTS[2]
    pool = KVPool(
        num_blocks=4,
        num_layers=spec.num_layers,
        block_size=16,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        dtype=torch.float32,
    )
    batch = build_step_batch(
        [ChunkInput(prompt, 0, [0, 1, 2])],
        [],
        sample_rows=range(len(prompt)),
        block_size=16,
        device=torch.device("cpu"),
    )
    with torch.inference_mode():
        ours = model(batch, pool)
        ref = hf(torch.tensor([prompt])).logits[0].float()
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)


def test_tiny_export_loads_in_transformers(tiny: Any, tmp_path: Path) -> None:
    spec, model = tiny
    save_hf_directory(model, spec, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    prompts = [[256, *b"hello"], [256, *b"The quick brown fox jumps over"]]
    ours = generate_offline(tiny, prompts, max_tokens=NEW_TOKENS, ignore_eos=True)
    for prompt, result in zip(prompts, ours, strict=True):
        assert result.token_ids == hf_greedy(hf, prompt)
    spec2, model2 = load_model(str(tmp_path))
    assert spec2.fingerprint != spec.fingerprint  # another source, though the same weights
    assert generate_offline((spec2, model2), prompts, max_tokens=8, ignore_eos=True) == [
        r._replace(token_ids=r.token_ids[:8]) for r in ours
    ]


def _names(model: Any) -> list[str]:
    return [name for name, _ in model.named_parameters()]
