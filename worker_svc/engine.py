"""The execution engine: one mixed forward per step over the paged KV pool.

The scheduler decides everything (which blocks a sequence holds, what runs this step); the
engine keeps each sequence's execution state so that step plans carry deltas:

* ``block_table``: pool block ids in token order (``append_blocks`` adds to it);
* ``position``: how many tokens' KV is already in those blocks;
* ``last_token``: the token a decode feeds (the last sampled one, or given at start);
* ``num_generated``: tokens sampled so far (the index that seeds the next sample).

``execute(prefills, decodes)`` writes the KV of every chunk token and decode token at the
sequence's current positions, advances positions, and samples for every decode and every
chunk with ``sample=True``; a sampled token becomes ``last_token`` and bumps
``num_generated``. Nothing changes when it raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from servekit.modelspec import ModelSpec
from worker_svc.kv_pool import KVPool
from worker_svc.model import ChunkInput, DecodeInput, LlamaModel, build_step_batch
from worker_svc.plan import PrefillChunk
from worker_svc.sampling import Sampler, SamplingParams

__all__ = ["Engine", "PrefillChunk", "SamplingParams", "SeqState"]


@dataclass(slots=True)
class SeqState:
    """Execution state of one sequence on this worker."""

    sampling: SamplingParams
    position: int = 0
    last_token: int | None = None
    num_generated: int = 0
    block_table: list[int] = field(default_factory=list)


class Engine:
    """Runs steps of ``model`` over ``pool`` for sequences identified by integer ids."""

    def __init__(
        self, model: LlamaModel, spec: ModelSpec, pool: KVPool, *, sampler: Sampler | None = None
    ) -> None:
        geometry = (spec.num_layers, spec.num_kv_heads, spec.head_dim)
        if (pool.num_layers, pool.num_kv_heads, pool.head_dim) != geometry:
            raise ValueError(
                f"KV pool geometry (layers, kv heads, head dim) = "
                f"{(pool.num_layers, pool.num_kv_heads, pool.head_dim)} does not match the "
                f"model's {geometry}"
            )
        if pool.dtype != model.dtype or pool.device != model.device:
            raise ValueError(
                f"KV pool is {pool.dtype} on {pool.device}, model is {model.dtype} on "
                f"{model.device}"
            )
        self.model = model
        self.spec = spec
        self.pool = pool
        self._sampler = sampler if sampler is not None else Sampler()
        self._seqs: dict[int, SeqState] = {}
        self._blocks_held = 0  # sum of the block tables' lengths

    # ----------------------------------------------------------- sequence state

    def start_seq(
        self,
        seq: int,
        sampling: SamplingParams,
        *,
        position: int = 0,
        last_token: int | None = None,
        num_generated: int = 0,
    ) -> None:
        """Register ``seq``. ``position > 0``: KV of ``[0, position)`` is already in the
        blocks that ``append_blocks`` will give it (swap-in, migration)."""
        if seq in self._seqs:
            raise ValueError(f"sequence {seq} is already started")
        if position < 0 or num_generated < 0:
            raise ValueError(f"position and num_generated must be >= 0 (seq {seq})")
        if last_token is not None and not 0 <= last_token < self.spec.vocab_size:
            raise ValueError(f"last_token {last_token} outside [0, {self.spec.vocab_size})")
        self._seqs[seq] = SeqState(sampling, position, last_token, num_generated)

    def append_blocks(self, seq: int, block_ids: Sequence[int]) -> None:
        """Append pool blocks to ``seq``'s block table (in token order)."""
        state = self._get(seq)
        num_blocks = self.pool.num_blocks
        bad = [b for b in block_ids if not 0 <= b < num_blocks]
        if bad:
            raise ValueError(f"block ids {bad} outside the pool [0, {num_blocks}) (seq {seq})")
        state.block_table.extend(block_ids)
        self._blocks_held += len(block_ids)

    def drop_seq(self, seq: int) -> None:
        """Forget ``seq`` (its blocks are the scheduler's to free)."""
        self._blocks_held -= len(self._get(seq).block_table)
        del self._seqs[seq]

    def has_seq(self, seq: int) -> bool:
        return seq in self._seqs

    def seq_state(self, seq: int) -> SeqState:
        """The live state of ``seq`` (do not mutate)."""
        return self._get(seq)

    @property
    def num_seqs(self) -> int:
        return len(self._seqs)

    @property
    def num_blocks_held(self) -> int:
        """Pool blocks in the live sequences' block tables (the rest hold no live KV here)."""
        return self._blocks_held

    # ------------------------------------------------------------------- step

    def execute(self, prefills: Sequence[PrefillChunk], decodes: Sequence[int]) -> dict[int, int]:
        """One forward over ``prefills`` then ``decodes``; ``{seq: sampled token}``.

        Raises ``ValueError`` (changing nothing) when a sequence is unknown, appears twice,
        lacks blocks or context for its new positions, or has no last token to decode.
        """
        chunk_inputs, decode_inputs, sampled = self._plan(prefills, decodes)
        if not chunk_inputs and not decode_inputs:
            return {}
        num_prefill_rows = sum(len(c.token_ids) for c in chunk_inputs)
        sample_rows: list[int] = []
        row = 0
        for chunk in prefills:
            row += len(chunk.token_ids)
            if chunk.sample:
                sample_rows.append(row - 1)
        sample_rows.extend(range(num_prefill_rows, num_prefill_rows + len(decode_inputs)))
        batch = build_step_batch(
            chunk_inputs,
            decode_inputs,
            sample_rows=sample_rows,
            block_size=self.pool.block_size,
            device=self.pool.device,
        )
        with torch.inference_mode():
            logits = self.model(batch, self.pool)
        states = [self._seqs[s] for s in sampled]
        tokens = self._sampler.sample(
            logits, [s.sampling for s in states], [s.num_generated for s in states]
        )
        for chunk in prefills:
            self._seqs[chunk.seq].position += len(chunk.token_ids)
        for seq in decodes:
            self._seqs[seq].position += 1
        for state, token in zip(states, tokens, strict=True):
            state.last_token = token
            state.num_generated += 1
        return dict(zip(sampled, tokens, strict=True))

    def _plan(
        self, prefills: Sequence[PrefillChunk], decodes: Sequence[int]
    ) -> tuple[list[ChunkInput], list[DecodeInput], list[int]]:
        """Validate the step; model inputs and the sampled seqs in row order."""
        seen: set[int] = set()
        chunks: list[ChunkInput] = []
        sampled: list[int] = []
        vocab = self.spec.vocab_size
        for chunk in prefills:
            state = self._claim(chunk.seq, seen)
            n = len(chunk.token_ids)
            if n == 0:
                raise ValueError(f"empty prefill chunk for sequence {chunk.seq}")
            if not all(0 <= t < vocab for t in chunk.token_ids):
                raise ValueError(
                    f"prefill chunk of sequence {chunk.seq} has ids outside [0, {vocab})"
                )
            self._check_room(chunk.seq, state, state.position + n)
            chunks.append(ChunkInput(chunk.token_ids, state.position, state.block_table))
            if chunk.sample:
                sampled.append(chunk.seq)
        decode_inputs: list[DecodeInput] = []
        for seq in decodes:
            state = self._claim(seq, seen)
            if state.last_token is None:
                raise ValueError(f"sequence {seq} has no last token to decode")
            self._check_room(seq, state, state.position + 1)
            decode_inputs.append(DecodeInput(state.last_token, state.position, state.block_table))
            sampled.append(seq)
        return chunks, decode_inputs, sampled

    def _claim(self, seq: int, seen: set[int]) -> SeqState:
        if seq in seen:
            raise ValueError(f"sequence {seq} appears more than once in one step")
        seen.add(seq)
        return self._get(seq)

    def _check_room(self, seq: int, state: SeqState, new_position: int) -> None:
        if new_position > self.spec.max_model_len:
            raise ValueError(
                f"sequence {seq} would reach {new_position} tokens, beyond max_model_len "
                f"{self.spec.max_model_len}"
            )
        capacity = len(state.block_table) * self.pool.block_size
        if new_position > capacity:
            raise ValueError(
                f"sequence {seq} needs room for {new_position} tokens but its "
                f"{len(state.block_table)} block(s) hold {capacity}"
            )

    def _get(self, seq: int) -> SeqState:
        state = self._seqs.get(seq)
        if state is None:
            raise ValueError(f"unknown sequence {seq}")
        return state
