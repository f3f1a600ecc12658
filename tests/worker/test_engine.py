"""Engine API: sequence state, step validation, resuming from KV already in the pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from worker_svc.engine import Engine, PrefillChunk, SamplingParams
from worker_svc.kv_pool import KVPool
from worker_svc.model import GatherBuffers

from .helpers import new_pool, prompt_of

GREEDY = SamplingParams()


def run_greedy(engine: Engine, seq: int, prompt: list[int], steps: int) -> list[int]:
    out = [engine.execute([PrefillChunk(seq, prompt, True)], [])[seq]]
    for _ in range(steps - 1):
        out.append(engine.execute([], [seq])[seq])
    return out


def test_state_advances(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.start_seq(7, GREEDY)
    engine.append_blocks(7, [3, 4])
    assert engine.execute([PrefillChunk(7, prompt_of(10), False)], []) == {}
    state = engine.seq_state(7)
    assert (state.position, state.last_token, state.num_generated) == (10, None, 0)
    out = engine.execute([PrefillChunk(7, prompt_of(5, 1), True)], [])
    assert state.position == 15 and state.last_token == out[7] and state.num_generated == 1
    engine.execute([], [7])
    assert state.position == 16 and state.num_generated == 2
    assert engine.has_seq(7) and engine.num_seqs == 1
    engine.drop_seq(7)
    assert not engine.has_seq(7)
    assert engine.execute([], []) == {}


def test_step_errors_change_nothing(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine()
    engine.start_seq(1, GREEDY)
    engine.append_blocks(1, [0])
    with pytest.raises(ValueError, match="unknown sequence 9"):
        engine.execute([], [9])
    with pytest.raises(ValueError, match="no last token"):
        engine.execute([], [1])
    with pytest.raises(ValueError, match=r"needs room for 17 tokens but its 1 block\(s\) hold 16"):
        engine.execute([PrefillChunk(1, prompt_of(17), True)], [])
    with pytest.raises(ValueError, match="more than once"):
        engine.execute([PrefillChunk(1, [1], False), PrefillChunk(1, [2], True)], [])
    with pytest.raises(ValueError, match="outside"):
        engine.execute([PrefillChunk(1, [1, 999], True)], [])
    with pytest.raises(ValueError, match="empty prefill"):
        engine.execute([PrefillChunk(1, [], True)], [])
    assert engine.seq_state(1).position == 0
    with pytest.raises(ValueError, match="already started"):
        engine.start_seq(1, GREEDY)
    with pytest.raises(ValueError, match="outside the pool"):
        engine.append_blocks(1, [64])
    with pytest.raises(ValueError, match="unknown sequence"):
        engine.drop_seq(2)


def test_pool_must_match_model(tiny: Any) -> None:
    spec, model = tiny
    with pytest.raises(ValueError, match="geometry"):
        Engine(
            model,
            spec,
            KVPool(
                num_blocks=2,
                num_layers=1,
                block_size=16,
                num_kv_heads=4,
                head_dim=32,
                dtype=torch.float32,
            ),
        )
    with pytest.raises(ValueError, match="float64"):
        Engine(
            model,
            spec,
            KVPool(
                num_blocks=2,
                num_layers=4,
                block_size=16,
                num_kv_heads=4,
                head_dim=32,
                dtype=torch.float64,
            ),
        )


def test_resume_from_pool_copy_on_other_blocks(
    tiny: Any, make_engine: Callable[..., Engine]
) -> None:
    """Migration / swap-in: copy a sequence's blocks elsewhere, start with position > 0."""
    spec, model = tiny
    prompt = prompt_of(37, 3)
    ref_engine = make_engine()
    ref_engine.start_seq(0, GREEDY)
    ref_engine.append_blocks(0, [0, 1, 2, 3, 4])
    reference = run_greedy(ref_engine, 0, prompt, 30)

    src = make_engine()
    src.start_seq(0, GREEDY)
    src.append_blocks(0, [5, 6, 7, 8, 9])
    first = run_greedy(src, 0, prompt, 10)
    state = src.seq_state(0)
    # Copy blocks 5..9 (one contiguous group: all layers, K and V) into another pool at 20..24.
    dst = Engine(model, spec, new_pool(spec, model, 64, 16))
    dst.pool.block_range(20, 5).copy_(src.pool.block_range(5, 5))
    dst.start_seq(
        0,
        GREEDY,
        position=state.position,
        last_token=state.last_token,
        num_generated=state.num_generated,
    )
    dst.append_blocks(0, [20, 21, 22, 23, 24])
    rest = [dst.execute([], [0])[0] for _ in range(20)]
    assert first + rest == reference


def test_kv_pool_layout() -> None:
    pool = KVPool(
        num_blocks=3, num_layers=2, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.float32
    )
    assert pool.tensor.shape == (3, 2, 2, 4, 2, 8)
    assert pool.block_bytes == 2 * 2 * 4 * 2 * 8 * 4
    k, v = pool.layer_kv(1)
    k[2, 3] = 1.0
    v[2, 3] = 2.0
    block = pool.block_range(2, 1)[0]  # one contiguous region: [layers, 2, bs, kvh, hd]
    assert block.is_contiguous() and block[1, 0, 3].eq(1).all() and block[1, 1, 3].eq(2).all()
    assert pool.tensor.sum() == 3 * 2 * 8
    shared = torch.zeros(3, 2, 2, 4, 2, 8)
    assert (
        KVPool(
            num_blocks=3,
            num_layers=2,
            block_size=4,
            num_kv_heads=2,
            head_dim=8,
            dtype=torch.float32,
            tensor=shared,
        ).tensor.data_ptr()
        == shared.data_ptr()
    )
    with pytest.raises(ValueError, match="shape"):
        KVPool(
            num_blocks=4,
            num_layers=2,
            block_size=4,
            num_kv_heads=2,
            head_dim=8,
            dtype=torch.float32,
            tensor=shared,
        )
    with pytest.raises(ValueError, match="outside"):
        pool.block_range(2, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_runs() -> None:
    from fastswitch.offline import generate_offline
    from worker_svc.loader import load_model

    spec, model = load_model("tiny", device="cuda")
    assert model.dtype == torch.bfloat16
    results = generate_offline(
        (spec, model),
        [prompt_of(20), prompt_of(5, 1)],
        max_tokens=16,
        prefill_chunk=8,
        ignore_eos=True,
    )
    assert all(len(r.token_ids) == 16 for r in results)


def test_gather_buffers_reuse_one_buffer_per_side() -> None:
    """The gathers equal index_select; same-size or smaller gathers reuse the buffer."""
    cache = torch.randn(10, 3, 2, 4, 2, 8)[:, 1, 0]  # a strided per-layer view, as in the pool
    buffers = GatherBuffers()
    table = torch.tensor([[3, 1, 4], [1, 5, 9]])
    got = buffers.gather("k", cache, table)
    assert torch.equal(got, cache.index_select(0, table.reshape(-1)).view(2, 3, 4, 2, 8))
    ptr = got.data_ptr()
    again = buffers.gather("k", cache, torch.tensor([[2, 0]]))
    assert again.data_ptr() == ptr and torch.equal(again[0], cache[[2, 0]])
    assert buffers.gather("v", cache, table).data_ptr() != ptr  # the other side's own buffer
