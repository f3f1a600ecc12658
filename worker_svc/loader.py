"""Build a ``LlamaModel``: the embedded tiny model from its fixed seed, or a local HF directory.

HF parameter names map onto the model's fused matrices::

    model.embed_tokens.weight                      -> embed_tokens
    model.layers.N.self_attn.{q,k,v}_proj.weight   -> layers.N.qkv_proj    (rows q | k | v)
    model.layers.N.self_attn.{q,k,v}_proj.bias     -> layers.N.qkv_bias    (attention_bias)
    model.layers.N.self_attn.o_proj.weight         -> layers.N.o_proj
    model.layers.N.mlp.{gate,up}_proj.weight       -> layers.N.gate_up_proj (rows gate | up)
    model.layers.N.mlp.down_proj.weight            -> layers.N.down_proj
    model.layers.N.{input,post_attention}_layernorm.weight -> layers.N.{input,post}_norm
    model.norm.weight                              -> norm
    lm_head.weight                                 -> lm_head (absent when tied)

``save_hf_directory`` writes the reverse (config.json + model.safetensors), so the tiny model
can be loaded by transformers as a reference and by this loader as a directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from servekit.modelspec import (
    TINY_MODEL,
    ModelSpec,
    load_model_spec,
    safetensors_files,
    tiny_seed,
)
from worker_svc.model import LlamaModel

__all__ = ["default_dtype", "load_model", "save_hf_directory"]

_MODEL_TYPES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "MistralForCausalLM": "mistral",
}
_MAX_LISTED = 12
# Tiny model initialisation (see _init_tiny): scales chosen so greedy decoding is decided by
# margins of whole logit units, never by float noise.
_TINY_LOGIT_STD = 12.0  # std of the final logits
_TINY_QK_SCALE = 1.5  # std of q/k entries: peaked, position- and content-dependent attention
_TINY_ANTI_REPEAT = 0.5  # pushes the logit of the token just read down (less looping)


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    model: str, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[ModelSpec, LlamaModel]:
    """``(spec, model)`` for ``"tiny"`` or a local Hugging Face directory.

    ``dtype`` defaults to ``default_dtype(device)``. Raises ``FileNotFoundError`` for a
    missing directory, config or weights, ``ValueError`` for an unsupported model or weights
    that are incomplete or of the wrong shape (the offending names listed).
    """
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    spec = load_model_spec(model)
    if model == TINY_MODEL:
        weights = _init_tiny(spec, tiny_seed())
    else:
        weights = _read_hf_weights(Path(model), spec)
    net = LlamaModel(spec, device=device, dtype=dtype)
    _assign(net, spec, weights)
    return spec, net.eval()


def save_hf_directory(model: LlamaModel, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model`` as a HF directory (``config.json``, ``model.safetensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(_hf_config(spec), indent=2) + "\n")
    tensors = {name: t.detach().cpu().contiguous() for name, t in _to_hf(model, spec).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _hf_names(spec: ModelSpec) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not spec.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
        if spec.attention_bias:
            names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
        names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return names


def _read_hf_weights(directory: Path, spec: ModelSpec) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    wanted = set(_hf_names(spec))
    weights: dict[str, torch.Tensor] = {}
    for file in safetensors_files(directory):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                if name in wanted:
                    weights[name] = f.get_tensor(name)
    missing = [n for n in _hf_names(spec) if n not in weights]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise ValueError(
            f"weights in {directory} are incomplete: {len(missing)} tensor(s) missing: "
            f"{listed}{more}"
        )
    return weights


def _assign(net: LlamaModel, spec: ModelSpec, weights: dict[str, torch.Tensor]) -> None:
    """Copy HF-named ``weights`` into ``net``'s (fused) parameters, checking shapes."""

    def put(param: torch.Tensor, *names: str) -> None:
        parts = [weights[n] for n in names]
        src = parts[0] if len(parts) == 1 else torch.cat(parts)
        if src.shape != param.shape:
            raise ValueError(
                f"tensor {' + '.join(names)} has shape {tuple(src.shape)}, the config implies "
                f"{tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(src)

    put(net.embed_tokens, "model.embed_tokens.weight")
    put(net.norm, "model.norm.weight")
    if not spec.tie_word_embeddings:
        put(net.lm_head, "lm_head.weight")
    for i, layer in enumerate(net.decoder_layers):
        p = f"model.layers.{i}."
        put(layer.qkv_proj, *(p + f"self_attn.{x}_proj.weight" for x in "qkv"))
        if layer.qkv_bias is not None:
            put(layer.qkv_bias, *(p + f"self_attn.{x}_proj.bias" for x in "qkv"))
        put(layer.o_proj, p + "self_attn.o_proj.weight")
        put(layer.gate_up_proj, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        put(layer.down_proj, p + "mlp.down_proj.weight")
        put(layer.input_norm, p + "input_layernorm.weight")
        put(layer.post_norm, p + "post_attention_layernorm.weight")


def _to_hf(net: LlamaModel, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The inverse of ``_assign``: HF-named tensors (views) of ``net``'s parameters."""
    q_rows = spec.num_heads * spec.head_dim
    kv_rows = spec.num_kv_heads * spec.head_dim
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": net.embed_tokens,
        "model.norm.weight": net.norm,
    }
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = net.lm_head
    for i, layer in enumerate(net.decoder_layers):
        p = f"model.layers.{i}."
        for x, t in zip("qkv", layer.qkv_proj.split([q_rows, kv_rows, kv_rows]), strict=True):
            out[p + f"self_attn.{x}_proj.weight"] = t
        if layer.qkv_bias is not None:
            for x, t in zip("qkv", layer.qkv_bias.split([q_rows, kv_rows, kv_rows]), strict=True):
                out[p + f"self_attn.{x}_proj.bias"] = t
        out[p + "self_attn.o_proj.weight"] = layer.o_proj
        gate, up = layer.gate_up_proj.chunk(2)
        out[p + "mlp.gate_proj.weight"] = gate
        out[p + "mlp.up_proj.weight"] = up
        out[p + "mlp.down_proj.weight"] = layer.down_proj
        out[p + "input_layernorm.weight"] = layer.input_norm
        out[p + "post_attention_layernorm.weight"] = layer.post_norm
    return out


def _hf_config(spec: ModelSpec) -> dict[str, object]:
    scaling = spec.rope_scaling
    rope_scaling = None
    if scaling is not None:
        rope_scaling = {"rope_type": scaling.rope_type, "factor": scaling.factor}
        if scaling.rope_type == "llama3":
            rope_scaling.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position_embeddings,
            )
    eos = list(spec.eos_token_ids)
    return {
        "architectures": [spec.architecture],
        "model_type": _MODEL_TYPES[spec.architecture],
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_model_len,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": rope_scaling,
        "attention_bias": spec.attention_bias,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "sliding_window": None,
        "use_sliding_window": False,
        "torch_dtype": "float32",
    }


def _init_tiny(spec: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
    """HF-named fp32 weights of the tiny model, drawn on the CPU from ``seed``.

    Greedy decoding must not depend on float noise (batch shape, chunking, CPU vs GPU): the
    final logits get a std of ``_TINY_LOGIT_STD`` so the top-1/top-2 gap is typically whole
    units. EOS rows of ``lm_head`` are zero, far below the top logit, so generations run to
    ``max_tokens``; a negative multiple of each token's own embedding is mixed into its
    ``lm_head`` row so the model rarely repeats the token it just read.
    """
    g = torch.Generator().manual_seed(seed)
    h, hd, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    nh, nkv = spec.num_heads, spec.num_kv_heads

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    embed = normal(spec.vocab_size, h, std=1.0)
    unit_embed = embed / embed.norm(dim=1, keepdim=True)
    lm_head = normal(spec.vocab_size, h, std=_TINY_LOGIT_STD / h**0.5)
    lm_head -= _TINY_ANTI_REPEAT * _TINY_LOGIT_STD * unit_embed
    lm_head[list(spec.eos_token_ids)] = 0.0
    w: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": torch.ones(h),
        "lm_head.weight": lm_head,
    }
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(nh * hd, h, std=_TINY_QK_SCALE / h**0.5)
        w[p + "self_attn.k_proj.weight"] = normal(nkv * hd, h, std=_TINY_QK_SCALE / h**0.5)
        w[p + "self_attn.v_proj.weight"] = normal(nkv * hd, h, std=1.0 / h**0.5)
        w[p + "self_attn.o_proj.weight"] = normal(h, nh * hd, std=1.0 / (nh * hd) ** 0.5)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h, std=1.0 / h**0.5)
        w[p + "mlp.up_proj.weight"] = normal(inter, h, std=1.0 / h**0.5)
        w[p + "mlp.down_proj.weight"] = normal(h, inter, std=1.0 / inter**0.5)
        w[p + "input_layernorm.weight"] = torch.ones(h)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h)
    return w
