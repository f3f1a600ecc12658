"""Offline continuous batching in one process: tests, and the ``fastswitch run`` command.

The loop plays the scheduler's part in miniature over the real pieces: the block-group
allocator (``scheduler_svc.block_groups``) hands out KV blocks, the ``Engine`` executes one
mixed step at a time. Each iteration::

    grow      running requests get the blocks their next chunk/decode needs; when blocks
              run short the most recently admitted request is preempted (recompute: its
              blocks freed, prompt + generated tokens prefilled again later)
    admit     waiting requests, in order, while batch slots and blocks last
    execute   one forward: a prefill chunk per prefilling request + every decode
    finish    EOS / stop token -> "stop", max_tokens -> "length"; blocks freed

Seeded sampling makes recomputation invisible: the sample index is the number of tokens
generated, so a preempted request continues exactly as it would have.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from scheduler_svc.block_groups import BlockGroupAllocator
from servekit.modelspec import ModelSpec
from servekit.tokenizer import TokenizerUnavailableError, load_tokenizer
from servekit.validation import validate_generation
from worker_svc.engine import Engine, PrefillChunk, SamplingParams
from worker_svc.kv_pool import KVPool
from worker_svc.loader import load_model
from worker_svc.model import LlamaModel

__all__ = ["GenerationResult", "add_run_arguments", "generate_offline", "run_command"]

LoadedModel = tuple[ModelSpec, LlamaModel]


class GenerationResult(NamedTuple):
    """Generated ids (a final EOS/stop token included) and why generation ended."""

    token_ids: list[int]
    finish_reason: str  # "stop" | "length"


@dataclass(slots=True)
class _Request:
    seq: int
    prompt: list[int]
    max_tokens: int
    sampling: SamplingParams
    expected_blocks: int
    output: list[int] = field(default_factory=list)
    prefilled: int = 0  # tokens of prompt + output whose KV is in the engine
    decoding: bool = False  # sampled since admitted: feeds its last token by decode
    finish_reason: str | None = None

    @property
    def tokens(self) -> list[int]:
        """What must be prefilled: the prompt, plus earlier output after a preemption."""
        return self.prompt + self.output


def generate_offline(
    model: str | LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_tokens: int | Sequence[int],
    sampling: SamplingParams | Sequence[SamplingParams] = SamplingParams(),  # noqa: B008 (frozen)
    prefill_chunk: int | None = None,
    max_batch: int = 32,
    num_blocks: int | None = None,
    block_size: int = 16,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    device: torch.device | str = "cpu",
) -> list[GenerationResult]:
    """Generate for every prompt with continuous batching; results in prompt order.

    ``model`` is ``"tiny"``, a directory, or ``(spec, model)`` from ``load_model``.
    ``max_tokens`` and ``sampling`` may be one value or one per prompt. ``prefill_chunk``
    caps the prompt tokens a request prefills per step (``None``: whole prompt at once).
    ``num_blocks`` defaults to what the ``max_batch`` largest requests need at once.
    ``ValueError`` for an invalid prompt (see ``servekit.validation``) or parameters.
    """
    spec, net = load_model(model, device=device) if isinstance(model, str) else model
    n = len(prompts)
    limits = [max_tokens] * n if isinstance(max_tokens, int) else list(max_tokens)
    samplings = [sampling] * n if isinstance(sampling, SamplingParams) else list(sampling)
    if len(limits) != n or len(samplings) != n:
        raise ValueError("max_tokens and sampling need one value or one per prompt")
    if prefill_chunk is not None and prefill_chunk <= 0:
        raise ValueError(f"prefill_chunk must be > 0, got {prefill_chunk}")
    if max_batch <= 0 or block_size <= 0:
        raise ValueError(f"max_batch and block_size must be > 0 ({max_batch}, {block_size})")
    requests = []
    for i, (prompt, limit, params) in enumerate(zip(prompts, limits, samplings, strict=True)):
        validate_generation(
            prompt, limit, vocab_size=spec.vocab_size, max_model_len=spec.max_model_len
        )
        need = -(-(len(prompt) + limit) // block_size)
        requests.append(_Request(i, list(prompt), limit, params, need))
    if num_blocks is None:
        num_blocks = sum(sorted((r.expected_blocks for r in requests), reverse=True)[:max_batch])
    for r in requests:
        if r.expected_blocks > num_blocks:
            raise ValueError(
                f"prompt {r.seq} needs {r.expected_blocks} KV blocks but the pool has {num_blocks}"
            )
    pool = KVPool(
        num_blocks=max(num_blocks, 1),
        num_layers=spec.num_layers,
        block_size=block_size,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        dtype=net.dtype,
        device=net.device,
    )
    stops = frozenset(stop_token_ids) | (
        frozenset() if ignore_eos else frozenset(spec.eos_token_ids)
    )
    loop = _Loop(Engine(net, spec, pool), BlockGroupAllocator(num_blocks), max_batch, block_size)
    loop.run(requests, prefill_chunk, stops)
    return [GenerationResult(r.output, r.finish_reason or "length") for r in requests]


class _Loop:
    """The grow / admit / execute / finish iteration of ``generate_offline``."""

    def __init__(
        self, engine: Engine, alloc: BlockGroupAllocator, max_batch: int, block_size: int
    ) -> None:
        self.engine = engine
        self.alloc = alloc
        self.max_batch = max_batch
        self.block_size = block_size
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []

    def run(
        self, requests: list[_Request], prefill_chunk: int | None, stops: frozenset[int]
    ) -> None:
        self.waiting.extend(requests)
        while self.waiting or self.running:
            self._grow(prefill_chunk)
            self._admit(prefill_chunk)
            prefills: list[PrefillChunk] = []
            decodes: list[int] = []
            for r in self.running:
                if r.decoding:
                    decodes.append(r.seq)
                    continue
                todo = len(r.tokens) - r.prefilled
                size = min(todo, prefill_chunk or todo)
                chunk = r.tokens[r.prefilled : r.prefilled + size]
                prefills.append(PrefillChunk(r.seq, chunk, sample=size == todo))
                r.prefilled += size
            sampled = self.engine.execute(prefills, decodes)
            for seq in decodes:
                self._request(seq).prefilled += 1
            for seq, token in sampled.items():
                self._on_token(self._request(seq), token, stops)
            self.alloc.check_integrity()

    def _blocks_needed(self, r: _Request, prefill_chunk: int | None) -> int:
        """Blocks ``r`` must hold before its work of this step (beyond what it holds)."""
        if r.decoding:
            end = r.prefilled + 1
        else:
            todo = len(r.tokens) - r.prefilled
            end = r.prefilled + min(todo, prefill_chunk or todo)
        return max(0, -(-end // self.block_size) - self.alloc.num_blocks_of(r.seq))

    def _grow(self, prefill_chunk: int | None) -> None:
        i = 0
        while i < len(self.running):
            r = self.running[i]
            need = self._blocks_needed(r, prefill_chunk)
            while need and not self.alloc.can_allocate(need) and len(self.running) > i + 1:
                self._preempt(self.running[-1])
            if need and not self.alloc.can_allocate(need):
                self._preempt(r)  # the last running request: it restarts when blocks free up
                continue
            self._give(r, need)
            i += 1

    def _admit(self, prefill_chunk: int | None) -> None:
        while self.waiting and len(self.running) < self.max_batch:
            r = self.waiting[0]
            need = self._blocks_needed(r, prefill_chunk)
            if not self.alloc.can_allocate(need):
                return
            self.waiting.popleft()
            self.engine.start_seq(r.seq, r.sampling, num_generated=len(r.output))
            self.running.append(r)
            self._give(r, need)

    def _give(self, r: _Request, count: int) -> None:
        runs = self.alloc.allocate(r.seq, count, expected_total=r.expected_blocks)
        assert runs is not None, "capacity was checked first"
        self.engine.append_blocks(r.seq, [b for run in runs for b in run.blocks()])

    def _preempt(self, r: _Request) -> None:
        self._release(r)
        r.prefilled = 0
        r.decoding = False
        self.waiting.appendleft(r)

    def _release(self, r: _Request) -> None:
        self.running.remove(r)
        self.alloc.free(r.seq)
        self.engine.drop_seq(r.seq)

    def _request(self, seq: int) -> _Request:
        return next(r for r in self.running if r.seq == seq)

    def _on_token(self, r: _Request, token: int, stops: frozenset[int]) -> None:
        r.output.append(token)
        r.decoding = True
        if token in stops:
            r.finish_reason = "stop"
        elif len(r.output) >= r.max_tokens:
            r.finish_reason = "length"
        else:
            return
        self._release(r)


# ------------------------------------------------------------------------ CLI


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``fastswitch run``."""
    parser.add_argument("--model", default="tiny", help="'tiny' or a local HF model directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (BOS is prepended when the model has one)")
    prompt.add_argument("--prompt-token-ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt in the chat template")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = disabled")
    parser.add_argument("--seed", type=int, default=None, help="reproducible sampling")
    parser.add_argument("--ignore-eos", action="store_true", help="run to --max-tokens")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_command(args: argparse.Namespace) -> int:
    """Run ``fastswitch run``; 0 on success, 2 (message on stderr) on bad input."""
    try:
        sampling = SamplingParams(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed
        )
        tokenizer = load_tokenizer(args.model)
        if args.prompt_token_ids is not None:
            prompt = _parse_ids(args.prompt_token_ids)
        elif args.chat:
            prompt = tokenizer.apply_chat_template([("user", args.prompt)])
        else:
            prompt = tokenizer.encode_prompt(args.prompt)
        loaded = load_model(args.model, device=args.device)
        (result,) = generate_offline(
            loaded,
            [prompt],
            max_tokens=args.max_tokens,
            sampling=sampling,
            ignore_eos=args.ignore_eos,
        )
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"fastswitch run: error: {exc}\n")
        return 2
    try:
        text: str | None = tokenizer.decode(result.token_ids)
    except TokenizerUnavailableError:
        text = None
    if args.json:
        payload = {
            "token_ids": result.token_ids,
            "text": text,
            "finish_reason": result.finish_reason,
        }
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        sys.stdout.write(f"token_ids: {' '.join(map(str, result.token_ids))}\n")
        if text is not None:
            sys.stdout.write(f"text: {text!r}\n")
        sys.stdout.write(f"finish_reason: {result.finish_reason}\n")
    return 0


def _parse_ids(value: str) -> list[int]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"--prompt-token-ids must be comma-separated integers, got {value!r}"
        ) from None
