"""Sampling: parameter validation, filters, and seeds that survive batching and preemption."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from fastswitch.offline import generate_offline
from worker_svc.sampling import Sampler, SamplingParams, sampling_uniform

from .helpers import prompt_of

PROMPTS = [prompt_of(n, salt=i) for i, n in enumerate([4, 30, 12, 55, 9, 21])]
HOT = 4.0  # the tiny model's logits are spread over many units: sample from a flatter softmax


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_invalid_params(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_uniform_is_a_pure_function() -> None:
    values = [sampling_uniform(7, i) for i in range(1000)]
    assert values == [sampling_uniform(7, i) for i in range(1000)]
    assert all(0.0 <= u < 1.0 for u in values)
    assert 0.45 < sum(values) / len(values) < 0.55
    assert sampling_uniform(7, 0) != sampling_uniform(8, 0)


def test_filters_and_distribution() -> None:
    sampler = Sampler(random.Random(0))
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    greedy = SamplingParams()
    assert sampler.sample(logits[:1], [greedy], [0]) == [0]
    top1 = SamplingParams(temperature=1.0, top_k=1, seed=1)
    assert set(sampler.sample(logits[:50], [top1] * 50, range(50))) == {0}
    tiny_p = SamplingParams(temperature=1.0, top_p=0.01, seed=1)
    assert set(sampler.sample(logits[:50], [tiny_p] * 50, range(50))) == {0}
    top2 = SamplingParams(temperature=1.0, top_k=2, seed=3)
    assert set(sampler.sample(logits[:200], [top2] * 200, range(200))) == {0, 1}
    # top_p 0.8 keeps tokens 0 and 1 (probabilities 0.636 + 0.234 cross 0.8), nothing else.
    nucleus = SamplingParams(temperature=1.0, top_p=0.8, seed=3)
    assert set(sampler.sample(logits[:300], [nucleus] * 300, range(300))) == {0, 1}
    counts = torch.bincount(
        torch.tensor(
            sampler.sample(logits, [SamplingParams(temperature=1.0, seed=5)] * 4000, range(4000))
        ),
        minlength=5,
    )
    expected = torch.softmax(logits[0], -1) * 4000
    assert ((counts - expected).abs() < 4 * expected.sqrt() + 5).all()


def test_mixed_rows_in_one_call() -> None:
    sampler = Sampler()
    logits = torch.randn(6, 50)
    params = [SamplingParams(), SamplingParams(temperature=1.0, seed=2)] * 3
    tokens = sampler.sample(logits, params, [0, 1, 2, 3, 4, 5])
    assert tokens[0::2] == logits[0::2].argmax(-1).tolist()
    alone = [sampler.sample(logits[i : i + 1], [params[i]], [i])[0] for i in range(6)]
    assert tokens == alone


def test_seeded_generation_reproducible_and_batch_independent(tiny: Any) -> None:
    params = [
        SamplingParams(temperature=HOT, top_p=0.95, top_k=40, seed=100 + i)
        for i in range(len(PROMPTS))
    ]
    batched = generate_offline(tiny, PROMPTS, max_tokens=24, sampling=params, ignore_eos=True)
    again = generate_offline(
        tiny, PROMPTS, max_tokens=24, sampling=params, ignore_eos=True, prefill_chunk=8, max_batch=4
    )
    assert again == batched
    alone = [
        generate_offline(tiny, [p], max_tokens=24, sampling=s, ignore_eos=True)[0]
        for p, s in zip(PROMPTS[:3], params[:3], strict=True)
    ]
    assert alone == batched[:3]
    preempted = generate_offline(
        tiny, PROMPTS, max_tokens=24, sampling=params, ignore_eos=True, num_blocks=8
    )
    assert preempted == batched
    greedy = generate_offline(tiny, PROMPTS, max_tokens=24, ignore_eos=True)
    assert [r.token_ids for r in batched] != [r.token_ids for r in greedy]
    other_seed = [SamplingParams(temperature=HOT, top_p=0.95, top_k=40, seed=1)] * len(PROMPTS)
    different = generate_offline(tiny, PROMPTS, max_tokens=24, sampling=other_seed, ignore_eos=True)
    assert [r.token_ids for r in different] != [r.token_ids for r in batched]


def test_unseeded_sampling_differs_between_runs(tiny: Any) -> None:
    hot = SamplingParams(temperature=HOT)
    a = generate_offline(tiny, PROMPTS[:2], max_tokens=24, sampling=hot, ignore_eos=True)
    b = generate_offline(tiny, PROMPTS[:2], max_tokens=24, sampling=hot, ignore_eos=True)
    assert a != b
