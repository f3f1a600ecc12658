"""The tiny model: greedy output independent of batching and chunking, and robust margins."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from fastswitch.offline import generate_offline
from worker_svc.engine import Engine, PrefillChunk, SamplingParams
from worker_svc.sampling import Sampler

from .helpers import prompt_of

LENGTHS = [3, 17, 40, 64, 100, 5, 33, 90]
PROMPTS = [prompt_of(n, salt=i) for i, n in enumerate(LENGTHS)]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def alone(tiny: Any) -> list[list[int]]:
    """Each request generated on its own, whole-prompt prefill."""
    return [
        generate_offline(tiny, [p], max_tokens=MAX_TOKENS, ignore_eos=True)[0].token_ids
        for p in PROMPTS
    ]


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_batched_and_chunked_equal_alone(
    tiny: Any, alone: list[list[int]], chunk: int | None
) -> None:
    results = generate_offline(
        tiny, PROMPTS, max_tokens=MAX_TOKENS, prefill_chunk=chunk, ignore_eos=True
    )
    assert [r.token_ids for r in results] == alone
    assert all(r.finish_reason == "length" for r in results)


def test_mixed_prefill_and_decode_steps(tiny: Any, alone: list[list[int]]) -> None:
    """Requests arriving one by one (max_batch 3) mix prefill chunks and decodes in a step."""
    results = generate_offline(
        tiny, PROMPTS, max_tokens=MAX_TOKENS, prefill_chunk=16, max_batch=3, ignore_eos=True
    )
    assert [r.token_ids for r in results] == alone


def test_preemption_by_recompute_is_invisible(tiny: Any, alone: list[list[int]]) -> None:
    """A pool too small for everyone forces preemptions; outputs do not change."""
    results = generate_offline(
        tiny, PROMPTS, max_tokens=MAX_TOKENS, num_blocks=12, prefill_chunk=32, ignore_eos=True
    )
    assert [r.token_ids for r in results] == alone


class MarginSampler(Sampler):
    """Records the top-1 minus top-2 logit of every row it samples."""

    def __init__(self) -> None:
        super().__init__()
        self.margins: list[float] = []

    def sample(
        self, logits: torch.Tensor, params: Sequence[SamplingParams], indices: Sequence[int]
    ) -> list[int]:
        top = logits.topk(2, dim=-1).values
        self.margins.extend((top[:, 0] - top[:, 1]).tolist())
        return super().sample(logits, params, indices)


def test_greedy_margins_far_above_float_noise(
    tiny: Any, make_engine: Callable[..., Engine]
) -> None:
    spec, model = tiny
    sampler = MarginSampler()
    engine = Engine(model, spec, make_engine(num_blocks=80).pool, sampler=sampler)
    prompts = [[256, *b"Hello"], prompt_of(30, 1), prompt_of(7, 2), [256]]
    steps = 150
    for seq in range(len(prompts)):
        engine.start_seq(seq, SamplingParams())
        engine.append_blocks(seq, range(seq * 20, seq * 20 + 20))
    engine.execute([PrefillChunk(s, p, True) for s, p in enumerate(prompts)], [])
    outputs: list[list[int]] = [[] for _ in prompts]
    for _ in range(steps):
        for seq, token in engine.execute([], range(len(prompts))).items():
            outputs[seq].append(token)
    assert len(sampler.margins) == len(prompts) * (steps + 1)
    assert min(sampler.margins) > 1e-3
    assert sorted(sampler.margins)[len(sampler.margins) // 100] > 0.01  # 1st percentile
    eos = set(spec.eos_token_ids)
    for out in outputs:
        assert not eos & set(out)  # runs to max_tokens
        assert len(set(out)) > 20  # not degenerate
