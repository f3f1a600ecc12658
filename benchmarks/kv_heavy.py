"""A "KV-heavy" Llama model for the end-to-end benchmarks, and why its shape is realistic.

The embedded ``tiny`` model has 4 KiB of KV per token against ~1 MFLOP of compute, so on this
CPU a swap costs next to nothing against a step and every mode looks the same. What decides
whether context switching hurts is how long moving a token's KV over the link takes against
computing that token. On the paper's LLaMA-3-8B on an A10 over PCIe 4.0 x16:

    KV per token      32 layers x 2 x 8 kv heads x 128 x 2 B (fp16)   = 128 KiB
    FLOPs per token   2 x 8.0e9 parameters                             = 16 GFLOP
    link              ~25 GB/s pinned host <-> device                  -> 5.2 us per token
    compute           125 TFLOP/s fp16 peak, ~50% in prefill           -> 256 us per token
    R = link time / compute time                                       ~ 0.02

This CPU has ~1000x fewer FLOP/s than an A10 but only ~3x less copy bandwidth, so the model
must carry ~1000x more KV per FLOP to sit at the same R: a narrow residual stream
(``hidden_size`` 128) under wide attention (4 KV heads x 128 = 512 per K or V, fp32). Its
per-layer K (or V) slice of one 16-token block is 32 KiB, exactly the size of vLLM's per-block
per-layer copies on LLaMA-8B, so the per-layer baseline makes copies of the real size too.
``measure_ratio`` measures this machine's matmul and copy rates and prints R for both.

Weights are drawn from a fixed seed and written with ``save_hf_directory``, so the worker
loads the model as any Hugging Face directory (``--model DIR``). The directory has no
``tokenizer.json``: the benchmarks send token ids.

On a GPU the same question has another answer: a small-batch step of LLaMA-8B is bounded by
kernel launches and weight reads, not FLOPs, so the ``llama3-8b-kv`` geometry keeps LLaMA-3-8B's
KV exactly (32 layers, 8 KV heads x 128: 128 KiB per token in bf16, 2 MiB per 16-token block,
32 KiB per-layer K/V chunks) over a narrow residual stream (``hidden_size`` 512, ~140 M
parameters), so every swap moves the real model's bytes in the real number of copies while
its random weights build in seconds.

    .venv/bin/python benchmarks/kv_heavy.py     # prints the reasoning with this machine's rates
        [--geometry kv-heavy|llama3-8b-kv]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from servekit.modelspec import ModelSpec, tiny_model_spec
from worker_svc.loader import save_hf_directory
from worker_svc.model import LlamaModel

SEED = 20250407

#: LLaMA-3-8B on an A10 (PCIe 4.0 x16), the paper's first setting.
A10_FLOPS = 125e12 * 0.5  # fp16 tensor peak, at ~50% utilisation
A10_LINK_BPS = 25e9  # pinned copies over PCIe 4.0 x16
LLAMA8B_KV_BYTES = 32 * 2 * 8 * 128 * 2
LLAMA8B_FLOPS = 2 * 8.03e9


#: name -> (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim)
GEOMETRIES: dict[str, tuple[int, int, int, int, int, int]] = {
    "kv-heavy": (128, 512, 8, 4, 4, 128),  # this CPU at LLaMA-8B-on-an-A10's R (above)
    "llama3-8b-kv": (512, 1536, 32, 8, 8, 128),  # LLaMA-3-8B's KV bytes and copies (GPU)
}


def kv_heavy_spec(max_model_len: int = 4096, geometry: str = "kv-heavy") -> ModelSpec:
    """Byte vocabulary and specials of ``tiny`` (token ids stay valid), a shape of
    ``GEOMETRIES`` (``ValueError`` for another name)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}; got {geometry!r}")
    hidden, inter, layers, heads, kv_heads, head_dim = GEOMETRIES[geometry]
    return replace(
        tiny_model_spec(),
        name=geometry,
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        max_model_len=max_model_len,
        source_digest=f"{geometry}-seed-{SEED}",
    )


def flops_per_token(spec: ModelSpec) -> float:
    """2 x the parameters a token goes through (attention over the context not counted, as in
    the 2N rule for LLaMA-8B above)."""
    h, hd, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    per_layer = (
        h * (spec.num_heads + 2 * spec.num_kv_heads) * hd + spec.num_heads * hd * h + 3 * h * inter
    )
    return 2.0 * (spec.num_layers * per_layer + spec.vocab_size * h)


def build_model_dir(
    path: str | Path, max_model_len: int = 4096, geometry: str = "kv-heavy"
) -> Path:
    """Writes the KV-heavy model (config.json + model.safetensors) into ``path``."""
    spec = kv_heavy_spec(max_model_len, geometry)
    net = LlamaModel(spec, device="cpu", dtype=torch.float32)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() == 1:  # norms
                p.fill_(1.0)
            else:  # std 1/sqrt(fan_in): activations stay O(1) through the layers
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            assert torch.isfinite(p).all(), name
    return save_hf_directory(net, spec, path)


def _median_rate(fn, amount: float, repeats: int = 15) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return amount / statistics.median(times)


def measure_ratio(spec: ModelSpec | None = None) -> str:
    """This machine's matmul and copy rates, and R for the A10 and for this CPU (text)."""
    spec = spec or kv_heavy_spec()
    tokens = 256  # a prefill chunk's worth of rows
    x = torch.randn(tokens, spec.hidden_size)
    w = torch.randn(3 * spec.num_heads * spec.head_dim, spec.hidden_size)
    flops = _median_rate(lambda: x @ w.T, 2.0 * tokens * w.numel())
    src = torch.empty(64 * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src).fill_(2)
    copy_bps = _median_rate(lambda: dst.copy_(src), float(src.numel()))

    def ratio(m: ModelSpec) -> float:
        return (m.kv_bytes_per_token(4) / copy_bps) / (flops_per_token(m) / flops)

    kv, f = spec.kv_bytes_per_token(4), flops_per_token(spec)
    r_a10 = (LLAMA8B_KV_BYTES / A10_LINK_BPS) / (LLAMA8B_FLOPS / A10_FLOPS)
    chunk = spec.block_bytes(16, 4) // (spec.num_layers * 2)
    return "\n".join(
        [
            f"model: {spec.name}: hidden {spec.hidden_size}, {spec.num_layers} layers, "
            f"{spec.num_heads} heads / {spec.num_kv_heads} kv heads x {spec.head_dim}, "
            f"mlp {spec.intermediate_size}, fp32, max_model_len {spec.max_model_len}",
            f"  KV {kv / 1024:.0f} KiB/token, {f / 1e6:.1f} MFLOP/token "
            f"({kv / f:.2e} B/FLOP; LLaMA-8B: {LLAMA8B_KV_BYTES / LLAMA8B_FLOPS:.2e}); "
            f"block of 16 tokens {spec.block_bytes(16, 4) / 2**10:.0f} KiB, per-layer K/V "
            f"chunk {chunk / 1024:.0f} KiB (LLaMA-8B fp16: 32 KiB)",
            "  R = time to move a token's KV / time to compute it (2 x params FLOPs)",
            f"  this CPU: {flops / 1e9:.0f} GFLOP/s (fp32 matmul, {torch.get_num_threads()} "
            f"threads), {copy_bps / 1e9:.1f} GB/s copy -> {kv / copy_bps * 1e6:.1f} us vs "
            f"{f / flops * 1e6:.0f} us: R = {ratio(spec):.3f}  (tiny: R = "
            f"{ratio(tiny_model_spec()):.3f})",
            f"  LLaMA-8B on an A10: {A10_FLOPS / 1e12:.0f} TFLOP/s (50% of peak), "
            f"{A10_LINK_BPS / 1e9:.0f} GB/s PCIe -> "
            f"{LLAMA8B_KV_BYTES / A10_LINK_BPS * 1e6:.1f} us vs "
            f"{LLAMA8B_FLOPS / A10_FLOPS * 1e6:.0f} us: R = {r_a10:.3f}",
            "  caveat: decode attention reads the KV here at copy speed (a gather), on the A10 "
            "at HBM speed (~24x PCIe), so a swap costs less against a decode step here than "
            "there",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", choices=GEOMETRIES, default="kv-heavy")
    print(measure_ratio(kv_heavy_spec(geometry=parser.parse_args().geometry)))
