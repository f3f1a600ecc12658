"""A Llama-family decoder in plain torch whose attention reads and writes a paged KV pool.

One forward runs one *step*: any number of prefill chunks and decode tokens, concatenated
into a single ``[T, hidden]`` matrix for every projection. Rows are laid out prefill chunks
first (in the order given), then one row per decode::

    rows  [ chunk 0 (C0 rows) | chunk 1 (C1 rows) | ... | decode 0 | decode 1 | ... ]

Attention per layer: (1) the step's K/V are written into the pool at each row's
``(block, offset)`` slot; (2) each prefill chunk attends causally within itself and fully to
its sequence's earlier positions (a chunk starting at position 0 uses its own K/V and
``is_causal``; a later chunk gathers its sequence's K/V from the pool through its block
table); (3) all decodes share one ``scaled_dot_product_attention`` call over their gathered,
padded and masked K/V. Grouped-query attention uses SDPA's ``enable_gqa``.

Numerics follow transformers' Llama: RMSNorm in fp32 then cast, RoPE frequencies in fp32
(default, ``linear`` and ``llama3`` ``inv_freq`` computed as transformers does), SwiGLU MLP.
The fused ``qkv_proj`` and ``gate_up_proj`` weights are the HF matrices concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from servekit.modelspec import ModelSpec, RopeScaling
from worker_svc.kv_pool import KVPool

__all__ = [
    "ChunkInput",
    "DecodeInput",
    "GatherBuffers",
    "LlamaModel",
    "StepBatch",
    "build_step_batch",
    "rope_inv_freq",
]


class ChunkInput(NamedTuple):
    """One prefill chunk: ``token_ids`` at positions ``start_pos, start_pos + 1, ...``."""

    token_ids: Sequence[int]
    start_pos: int
    block_table: Sequence[int]


class DecodeInput(NamedTuple):
    """One decode token at ``position``."""

    token: int
    position: int
    block_table: Sequence[int]


class PrefillAttention(NamedTuple):
    """Rows ``[start, stop)`` of the step are one chunk starting at ``start_pos``.

    ``block_table`` and ``mask`` (``[C, ctx]``, True = may attend) are ``None`` when
    ``start_pos == 0``: the chunk then attends only to itself, causally.
    """

    start: int
    stop: int
    start_pos: int
    block_table: torch.Tensor | None
    mask: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class StepBatch:
    """Device tensors for one forward, built once per step by ``build_step_batch``."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    write_blocks: torch.Tensor  # [T] long: pool block of each row's K/V
    write_offsets: torch.Tensor  # [T] long: slot inside that block
    prefills: tuple[PrefillAttention, ...]
    num_prefill_rows: int  # decode rows are [num_prefill_rows, T)
    decode_block_tables: torch.Tensor | None  # [B, max_blocks] long, padded with block 0
    decode_mask: torch.Tensor | None  # [B, 1, 1, max_blocks * block_size] bool
    sample_rows: torch.Tensor  # [S] long: rows whose next-token logits are wanted


def build_step_batch(
    prefills: Sequence[ChunkInput],
    decodes: Sequence[DecodeInput],
    *,
    sample_rows: Sequence[int],
    block_size: int,
    device: torch.device,
) -> StepBatch:
    """Lay out one step's rows (chunks first, then decodes) and their KV slots.

    The caller guarantees every block table covers the positions written.
    """
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []  # flat slot = block * block_size + offset
    chunk_meta: list[PrefillAttention] = []
    for chunk in prefills:
        start = len(ids)
        n = len(chunk.token_ids)
        positions = range(chunk.start_pos, chunk.start_pos + n)
        table = chunk.block_table
        ids.extend(chunk.token_ids)
        pos.extend(positions)
        slots.extend(table[p // block_size] * block_size + p % block_size for p in positions)
        if chunk.start_pos == 0:
            chunk_meta.append(PrefillAttention(start, start + n, 0, None, None))
            continue
        ctx = chunk.start_pos + n
        nb = -(-ctx // block_size)
        bt = torch.tensor(table[:nb], dtype=torch.long, device=device)
        key_pos = torch.arange(ctx, device=device)
        query_pos = torch.arange(chunk.start_pos, ctx, device=device)
        mask = key_pos[None, :] <= query_pos[:, None]
        chunk_meta.append(PrefillAttention(start, start + n, chunk.start_pos, bt, mask))
    num_prefill_rows = len(ids)
    decode_tables: torch.Tensor | None = None
    decode_mask: torch.Tensor | None = None
    if decodes:
        max_nb = max(d.position // block_size + 1 for d in decodes)
        rows = []
        for d in decodes:
            ids.append(d.token)
            pos.append(d.position)
            slots.append(
                d.block_table[d.position // block_size] * block_size + d.position % block_size
            )
            table = list(d.block_table[:max_nb])
            rows.append(table + [0] * (max_nb - len(table)))
        decode_tables = torch.tensor(rows, dtype=torch.long, device=device)
        d_pos = torch.tensor([d.position for d in decodes], dtype=torch.long, device=device)
        key_pos = torch.arange(max_nb * block_size, device=device)
        decode_mask = (key_pos[None, :] <= d_pos[:, None])[:, None, None, :]
    packed = torch.tensor(ids + pos + slots + list(sample_rows), dtype=torch.long).to(device)
    t = len(ids)
    flat_slots = packed[2 * t : 3 * t]
    return StepBatch(
        input_ids=packed[:t],
        positions=packed[t : 2 * t],
        write_blocks=torch.div(flat_slots, block_size, rounding_mode="floor"),
        write_offsets=flat_slots % block_size,
        prefills=tuple(chunk_meta),
        num_prefill_rows=num_prefill_rows,
        decode_block_tables=decode_tables,
        decode_mask=decode_mask,
        sample_rows=packed[3 * t :],
    )


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScaling | None, device: torch.device | None = None
) -> torch.Tensor:
    """RoPE inverse frequencies ``[head_dim // 2]`` in fp32, exactly as transformers.

    (``_compute_default_rope_parameters``, ``_compute_linear_scaling_rope_parameters`` and
    ``_compute_llama3_parameters`` in ``transformers.modeling_rope_utils``.)
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    inv_freq = 1.0 / (theta ** (exponent / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    assert scaling.low_freq_factor is not None and scaling.high_freq_factor is not None
    assert scaling.original_max_position_embeddings is not None
    factor, low, high = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / low
    high_freq_wavelen = old_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class GatherBuffers:
    """Reused outputs of the K and V gathers, shared by every layer of one model.

    A decode step gathers every sequence's whole context, per layer, for K and for V: tens of
    MiB at a time on a KV-heavy model. Fresh tensors that large come from the allocator as new
    pages (on the CPU, glibc maps them and unmaps them on free), so each step page-faulted them
    again, which cost several times the gather itself. Layers run one after another and SDPA
    has read a gather before the next one starts (the same stream on CUDA), so one buffer per
    side serves them all; it grows to the largest gather seen and stays.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def gather(self, side: str, cache: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Blocks ``table`` (any shape) of a strided per-layer cache view, shape
        ``table.shape + [block_size, kvh, hd]``, in this side's buffer (valid until the next
        gather of the same side). ``index_select`` is several times faster than indexing."""
        index = table.reshape(-1)
        shape = (index.numel(), *cache.shape[1:])
        numel = math.prod(shape)
        buf = self._buffers.get(side)
        if buf is None or buf.numel() < numel or buf.dtype != cache.dtype:
            buf = self._buffers[side] = torch.empty(numel, dtype=cache.dtype, device=cache.device)
        out = buf[:numel].view(shape)
        torch.index_select(cache, 0, index, out=out)
        return out.view(*table.shape, *cache.shape[1:])


def _param(*shape: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, device=device, dtype=dtype), requires_grad=False)


class DecoderLayer(nn.Module):
    """One pre-norm block: attention (fused QKV, optional bias, GQA) and SwiGLU MLP."""

    def __init__(
        self,
        spec: ModelSpec,
        layer: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
        buffers: GatherBuffers | None = None,
    ):
        super().__init__()
        self.layer = layer
        self.gather_buffers = buffers if buffers is not None else GatherBuffers()
        self.num_heads = spec.num_heads
        self.num_kv_heads = spec.num_kv_heads
        self.head_dim = spec.head_dim
        self.eps = spec.rms_norm_eps
        h, hd = spec.hidden_size, spec.head_dim
        qkv_rows = (spec.num_heads + 2 * spec.num_kv_heads) * hd

        def param(*shape: int) -> nn.Parameter:
            return _param(*shape, device=device, dtype=dtype)

        self.input_norm = param(h)
        self.qkv_proj = param(qkv_rows, h)
        self.qkv_bias = param(qkv_rows) if spec.attention_bias else None
        self.o_proj = param(h, spec.num_heads * hd)
        self.post_norm = param(h)
        self.gate_up_proj = param(2 * spec.intermediate_size, h)
        self.down_proj = param(h, spec.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: StepBatch,
        pool: KVPool,
    ) -> torch.Tensor:
        x = x + self._attention(_rms_norm(x, self.input_norm, self.eps), cos, sin, batch, pool)
        gate, up = F.linear(_rms_norm(x, self.post_norm, self.eps), self.gate_up_proj).chunk(2, -1)
        return x + F.linear(F.silu(gate) * up, self.down_proj)

    def _attention(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: StepBatch, pool: KVPool
    ) -> torch.Tensor:
        t = x.shape[0]
        nh, nkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = F.linear(x, self.qkv_proj, self.qkv_bias)
        qk = qkv[:, : (nh + nkv) * hd].view(t, nh + nkv, hd)
        qk = qk * cos + _rotate_half(qk) * sin
        q, k = qk[:, :nh], qk[:, nh:]
        v = qkv[:, (nh + nkv) * hd :].view(t, nkv, hd)
        k_cache, v_cache = pool.layer_kv(self.layer)
        k_cache[batch.write_blocks, batch.write_offsets] = k
        v_cache[batch.write_blocks, batch.write_offsets] = v

        parts: list[torch.Tensor] = []
        for chunk in batch.prefills:
            # 4-D inputs: SDPA's CPU kernels fall back to a slow path for 3-D ones.
            qc = q[chunk.start : chunk.stop].transpose(0, 1)[None]  # [1, nh, C, hd]
            if chunk.block_table is None:
                kc = k[chunk.start : chunk.stop].transpose(0, 1)[None]
                vc = v[chunk.start : chunk.stop].transpose(0, 1)[None]
                out = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=True)
            else:
                ctx = chunk.start_pos + chunk.stop - chunk.start  # keys: every earlier position
                kc = self.gather_buffers.gather("k", k_cache, chunk.block_table)
                vc = self.gather_buffers.gather("v", v_cache, chunk.block_table)
                kc = kc.flatten(0, 1)[:ctx].transpose(0, 1)
                vc = vc.flatten(0, 1)[:ctx].transpose(0, 1)
                out = F.scaled_dot_product_attention(
                    qc, kc[None], vc[None], attn_mask=chunk.mask, enable_gqa=True
                )
            parts.append(out[0].transpose(0, 1).reshape(-1, nh * hd))
        if batch.decode_block_tables is not None:
            # One query per sequence: fold the query heads sharing a KV head into the query
            # axis, [B, nkv, nh // nkv, hd], so GQA needs no repeat of K/V.
            qd = q[batch.num_prefill_rows :].reshape(-1, nkv, nh // nkv, hd)
            kd = self.gather_buffers.gather("k", k_cache, batch.decode_block_tables)
            vd = self.gather_buffers.gather("v", v_cache, batch.decode_block_tables)
            kd = kd.flatten(1, 2).transpose(1, 2)
            vd = vd.flatten(1, 2).transpose(1, 2)
            out = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=batch.decode_mask)
            parts.append(out.reshape(-1, nh * hd))
        attn = parts[0] if len(parts) == 1 else torch.cat(parts)
        return F.linear(attn, self.o_proj)


class LlamaModel(nn.Module):
    """Decoder-only Llama/Qwen2/Mistral model; parameters are created empty (see loader).

    ``forward(batch, pool)`` writes the step's KV into ``pool`` and returns fp32 logits
    ``[len(batch.sample_rows), vocab_size]`` for the requested rows only.
    """

    def __init__(self, spec: ModelSpec, *, device: torch.device | str, dtype: torch.dtype):
        super().__init__()
        device = torch.device(device)
        self.spec = spec
        self.embed_tokens = _param(spec.vocab_size, spec.hidden_size, device=device, dtype=dtype)
        buffers = GatherBuffers()
        self.decoder_layers = [
            DecoderLayer(spec, i, device=device, dtype=dtype, buffers=buffers)
            for i in range(spec.num_layers)
        ]
        self.layers = nn.ModuleList(self.decoder_layers)  # registers them (state_dict, .to)
        self.norm = _param(spec.hidden_size, device=device, dtype=dtype)
        self.lm_head = (
            self.embed_tokens
            if spec.tie_word_embeddings
            else _param(spec.vocab_size, spec.hidden_size, device=device, dtype=dtype)
        )
        inv_freq = rope_inv_freq(spec.head_dim, spec.rope_theta, spec.rope_scaling, device)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def forward(self, batch: StepBatch, pool: KVPool) -> torch.Tensor:
        x = F.embedding(batch.input_ids, self.embed_tokens)
        freqs = batch.positions.float()[:, None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos().to(x.dtype)[:, None, :]  # [T, 1, hd], broadcast over heads
        sin = emb.sin().to(x.dtype)[:, None, :]
        for layer in self.decoder_layers:
            x = layer(x, cos, sin, batch, pool)
        x = _rms_norm(x[batch.sample_rows], self.norm, self.spec.rms_norm_eps)
        return F.linear(x, self.lm_head).float()
