"""Engine throughput next to transformers' ``generate`` on the same weights, in one run.

The tiny model is exported as a Hugging Face ``LlamaForCausalLM`` directory and loaded by
transformers; both sides then run the same batches of same-length prompts (no padding):

* prefill tok/s = batch * prompt_len / time of the prefill step (ours: one ``Engine.execute``
  over all prompts, sampling included; transformers: ``generate(max_new_tokens=1)``);
* decode tok/s = batch * (new - 1) / (time to generate ``new`` tokens - prefill time).

Every number is the median of ``--repeats`` runs after a warm-up; ratios are ours over
transformers. Greedy outputs of the two sides are compared and reported.

    .venv/bin/python benchmarks/engine.py [--batches 1,8,32] [--prompt-len 128] [--new 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from worker_svc.engine import Engine, PrefillChunk, SamplingParams
from worker_svc.kv_pool import KVPool
from worker_svc.loader import load_model, save_hf_directory


def _median_time(
    fn: Callable[[list[list[int]], int], Any], prompts: list[list[int]], new: int, repeats: int
) -> float:
    fn(prompts, new)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(prompts, new)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, 256, (batch, length), generator=g).remainder(vocab).tolist()


class OurSide:
    """Prefill all prompts in one step, then decode; a fresh engine and pool per run."""

    def __init__(self, loaded: Any, block_size: int = 16) -> None:
        self.spec, self.model = loaded
        self.block_size = block_size

    def run(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        spec, bs = self.spec, self.block_size
        per_seq = -(-(len(prompts[0]) + new) // bs)
        pool = KVPool(
            num_blocks=per_seq * len(prompts),
            num_layers=spec.num_layers,
            block_size=bs,
            num_kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            dtype=self.model.dtype,
            device=self.model.device,
        )
        engine = Engine(self.model, spec, pool)
        for seq in range(len(prompts)):
            engine.start_seq(seq, SamplingParams())
            engine.append_blocks(seq, range(seq * per_seq, (seq + 1) * per_seq))
        outs: list[list[int]] = [[] for _ in prompts]
        step = engine.execute([PrefillChunk(s, p, True) for s, p in enumerate(prompts)], [])
        seqs = list(range(len(prompts)))
        for _ in range(new - 1):
            for seq, token in step.items():
                outs[seq].append(token)
            step = engine.execute([], seqs)
        for seq, token in step.items():
            outs[seq].append(token)
        return outs


class HFSide:
    """``transformers`` ``generate`` (greedy, no EOS stop) on the exported directory."""

    def __init__(self, path: str) -> None:
        import transformers

        self.model: Any = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self.model.generation_config.eos_token_id = None
        self.model.generation_config.pad_token_id = 0

    def run(self, prompts: list[list[int]], new: int) -> list[list[int]]:
        ids = torch.tensor(prompts)
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
            )
        return out[:, ids.shape[1] :].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tiny-model engine throughput vs transformers generate (same weights)."
    )
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs per number (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    loaded = load_model("tiny")
    ours = OurSide(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_directory(loaded[1], loaded[0], tmp)
        hf = HFSide(tmp)
    print(
        f"tiny model, fp32 CPU, {torch.get_num_threads()} threads; prompt {args.prompt_len} "
        f"tokens, {args.new} new tokens; median of {args.repeats}"
    )
    header = f"{'batch':>5} {'phase':>8} {'fastswitch tok/s':>17} {'transformers tok/s':>19} "
    print(header + f"{'ratio':>7}  greedy equal")
    for batch in batches:
        prompts = _prompts(batch, args.prompt_len, loaded[0].vocab_size)
        equal = ours.run(prompts, args.new) == hf.run(prompts, args.new)
        rows = []
        for side in (ours, hf):
            t_prefill = _median_time(side.run, prompts, 1, args.repeats)
            t_all = _median_time(side.run, prompts, args.new, args.repeats)
            prefill = batch * args.prompt_len / t_prefill
            decode = batch * (args.new - 1) / max(t_all - t_prefill, 1e-9)
            rows.append((prefill, decode))
        for phase, i in (("prefill", 0), ("decode", 1)):
            a, b = rows[0][i], rows[1][i]
            print(f"{batch:>5} {phase:>8} {a:>17,.0f} {b:>19,.0f} {a / b:>6.2f}x  {equal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
