"""What a model is, without its weights: shapes, positions, special tokens, identity.

``load_model_spec("tiny")`` describes the embedded test model (built from a fixed seed, no
files); ``load_model_spec(DIR)`` reads a local Hugging Face directory (``config.json`` plus
``model.safetensors`` or ``model.safetensors.index.json``). No torch import: the scheduler
uses this to size KV blocks and validate requests cheaply.

Supported architectures: Llama-family decoders (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``MistralForCausalLM`` without a sliding window). Supported RoPE variants: default,
``linear`` and ``llama3``. Both the ``rope_theta`` + ``rope_scaling`` keys of transformers 4
and the ``rope_parameters`` dict of transformers 5 are read.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "TINY_MODEL",
    "ModelSpec",
    "RopeScaling",
    "load_model_spec",
    "read_special_token_ids",
    "safetensors_files",
    "tiny_model_spec",
    "tiny_seed",
]

TINY_MODEL = "tiny"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
_SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_TINY_SEED = 20240521
_SAFETENSORS_FILE = "model.safetensors"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
# Fingerprint of a directory: per weight file, its header plus this many evenly spaced
# samples of this many bytes (so fine-tunes with identical shapes still differ).
_FINGERPRINT_SAMPLES = 16
_FINGERPRINT_SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class RopeScaling:
    """A non-default RoPE variant, as transformers computes ``inv_freq`` for it.

    ``linear``: every inverse frequency divided by ``factor``. ``llama3``: low frequencies
    divided by ``factor``, high ones kept, the band between smoothly interpolated using
    ``low_freq_factor``, ``high_freq_factor`` and ``original_max_position_embeddings``.
    """

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.rope_type not in ("linear", "llama3"):
            raise ValueError(
                f"unsupported rope_scaling type {self.rope_type!r}; "
                f"supported: {', '.join(_SUPPORTED_ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ValueError(f"rope_scaling factor must be > 0, got {self.factor}")
        if self.rope_type == "llama3" and None in (
            self.low_freq_factor,
            self.high_freq_factor,
            self.original_max_position_embeddings,
        ):
            raise ValueError(
                "llama3 rope_scaling needs low_freq_factor, high_freq_factor and "
                "original_max_position_embeddings"
            )


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and identity of one decoder-only model (immutable, hashable).

    ``source_digest`` identifies where the weights come from (the tiny model's seed, or a
    digest of a directory's config and weight files); ``fingerprint`` combines it with every
    other field, so two specs with the same fingerprint mean the same KV for the same tokens.
    """

    name: str
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rope_scaling: RopeScaling | None
    rms_norm_eps: float
    max_model_len: int
    attention_bias: bool
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    source_digest: str | None = None

    def __post_init__(self) -> None:
        for field in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_model_len",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError("rope_theta and rms_norm_eps must be > 0")

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of K and V for one token over all layers."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes

    def block_bytes(self, block_size: int, dtype_bytes: int) -> int:
        """Bytes of one KV block: ``block_size`` tokens, all layers, K and V."""
        return block_size * self.kv_bytes_per_token(dtype_bytes)

    @property
    def fingerprint(self) -> str:
        """Stable hex digest of every field but ``name`` (a label), weights' identity included.

        The same weights and config copied to two directories share a fingerprint.
        """
        fields = astuple(replace(self, name=""))
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:32]


def tiny_model_spec() -> ModelSpec:
    """The embedded test model: byte tokens + specials, 4 layers, GQA 8/4, fp32 on CPU.

    Token ids 0..255 are bytes; 256.. are the specials of ``servekit.tokenizer.ByteTokenizer``
    (``<bos>`` 256, ``<eos>`` 257, ..., ``<|end|>`` 261).
    """
    return ModelSpec(
        name=TINY_MODEL,
        architecture="LlamaForCausalLM",
        vocab_size=262,
        hidden_size=256,
        intermediate_size=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        head_dim=32,
        rope_theta=10000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        max_model_len=2048,
        attention_bias=False,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_ids=(257, 261),
        source_digest=f"tiny-seed-{_TINY_SEED}-v1",
    )


def tiny_seed() -> int:
    """The fixed seed the tiny model's weights are drawn from."""
    return _TINY_SEED


def load_model_spec(model: str) -> ModelSpec:
    """The spec of ``"tiny"`` or of a local Hugging Face model directory.

    Raises ``FileNotFoundError`` for a missing directory, ``config.json`` or weights, and
    ``ValueError`` for an unsupported architecture, RoPE variant or malformed config.
    """
    if model == TINY_MODEL:
        return tiny_model_spec()
    directory = Path(model)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither {TINY_MODEL!r} nor an existing directory"
        )
    config = _read_json(directory / "config.json", what="config.json")
    weight_files = safetensors_files(directory)
    bos, eos = read_special_token_ids(directory)
    return _spec_from_config(
        config,
        name=directory.name or str(directory),
        bos_token_id=bos,
        eos_token_ids=eos,
        source_digest=_directory_digest(directory, weight_files),
    )


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files of a directory: ``model.safetensors`` or the shards of its index.

    ``FileNotFoundError`` when there are none, or when the index names a missing shard.
    """
    single = directory / _SAFETENSORS_FILE
    index = directory / _SAFETENSORS_INDEX
    if index.is_file():
        weight_map = _read_json(index, what=_SAFETENSORS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no 'weight_map'")
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names missing shard files: {', '.join(missing)}")
        return files
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"no safetensors weights in {directory}: expected {_SAFETENSORS_FILE} or "
        f"{_SAFETENSORS_INDEX} (.bin/.pt checkpoints are not supported)"
    )


def read_special_token_ids(directory: str | Path) -> tuple[int | None, tuple[int, ...]]:
    """``(bos, eos ids)`` of a directory: ``config.json``, merged with ``generation_config.json``.

    Any EOS listed in either file counts (Llama 3 instruct models list the end-of-turn token
    only in ``generation_config.json``).
    """
    directory = Path(directory)
    config = _read_json(directory / "config.json", what="config.json")
    gen_path = directory / "generation_config.json"
    gen = _read_json(gen_path, what=gen_path.name) if gen_path.is_file() else {}
    bos = config.get("bos_token_id", gen.get("bos_token_id"))
    eos: list[int] = []
    for source in (config, gen):
        value = source.get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token not in eos:
                eos.append(token)
    return (bos if isinstance(bos, int) else None), tuple(eos)


def _spec_from_config(
    config: dict[str, Any],
    *,
    name: str,
    bos_token_id: int | None,
    eos_token_ids: tuple[int, ...],
    source_digest: str,
) -> ModelSpec:
    architectures = config.get("architectures") or []
    architecture = architectures[0] if architectures else None
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {architecture!r} in config.json; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if architecture == "MistralForCausalLM" and config.get("sliding_window") is not None:
        raise ValueError(
            f"MistralForCausalLM with sliding_window={config['sliding_window']} is not supported "
            "(only sliding_window: null)"
        )
    if architecture == "Qwen2ForCausalLM" and config.get("use_sliding_window"):
        raise ValueError("Qwen2ForCausalLM with use_sliding_window=true is not supported")
    if config.get("mlp_bias"):
        raise ValueError("mlp_bias=true is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (only silu)")
    hidden = _config_int(config, "hidden_size")
    heads = _config_int(config, "num_attention_heads")
    rope_theta, rope_scaling = _rope_from_config(config)
    # Qwen2 always has q/k/v biases; Llama/Mistral only when attention_bias says so.
    attention_bias = bool(config.get("attention_bias", architecture == "Qwen2ForCausalLM"))
    try:
        rms_norm_eps = float(config.get("rms_norm_eps", 1e-6))
    except (TypeError, ValueError):
        raise ValueError(f"config.json: bad rms_norm_eps {config.get('rms_norm_eps')!r}") from None
    return ModelSpec(
        name=name,
        architecture=architecture,
        vocab_size=_config_int(config, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=_config_int(config, "intermediate_size"),
        num_layers=_config_int(config, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_config_int(config, "num_key_value_heads", heads),
        head_dim=_config_int(config, "head_dim", hidden // max(heads, 1)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=rms_norm_eps,
        max_model_len=_config_int(config, "max_position_embeddings", 2048),
        attention_bias=attention_bias,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=bos_token_id,
        eos_token_ids=eos_token_ids,
        source_digest=source_digest,
    )


def _config_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    """``config[key]`` as an int; ``default`` when absent or null (required when ``None``)."""
    value = config.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"config.json lacks required key {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"config.json: {key} must be an integer, got {value!r}")
    return value


def _rope_from_config(config: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """``(rope_theta, scaling)`` from transformers-4 or transformers-5 style keys."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" not in params and "rope_type" not in params:
        raise ValueError("per-layer rope_parameters are not supported")
    scaling = params if isinstance(params, dict) else config.get("rope_scaling")
    theta = (params or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    if not scaling:
        return float(theta), None
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type not in _SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope_scaling type {rope_type!r}; "
            f"supported: {', '.join(_SUPPORTED_ROPE_TYPES)}"
        )
    original = scaling.get("original_max_position_embeddings")
    return float(theta), RopeScaling(
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=_opt_float(scaling.get("low_freq_factor")),
        high_freq_factor=_opt_float(scaling.get("high_freq_factor")),
        original_max_position_embeddings=None if original is None else int(original),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _directory_digest(directory: Path, weight_files: list[Path]) -> str:
    """Cheap identity of a directory's weights: config, index, headers and sampled bytes.

    Not a full hash of the weights (that would read gigabytes): each file contributes its
    size, its safetensors header (names, dtypes, shapes, offsets) and ``_FINGERPRINT_SAMPLES``
    evenly spaced samples of its data.
    """
    digest = hashlib.sha256()
    digest.update((directory / "config.json").read_bytes())
    index = directory / _SAFETENSORS_INDEX
    if index.is_file():
        digest.update(index.read_bytes())
    for path in weight_files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path} is not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise ValueError(f"{path} is not a safetensors file (bad header length)")
            digest.update(f.read(header_len))
            data_start = 8 + header_len
            span = max(size - data_start - _FINGERPRINT_SAMPLE_BYTES, 0)
            for i in range(_FINGERPRINT_SAMPLES):
                f.seek(data_start + span * i // max(_FINGERPRINT_SAMPLES - 1, 1))
                digest.update(f.read(_FINGERPRINT_SAMPLE_BYTES))
    return digest.hexdigest()
