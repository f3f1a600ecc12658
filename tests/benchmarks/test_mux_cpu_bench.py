"""benchmarks/mux_cpu.py: its fake scheduler answers every request with its own length of
chunks through the real multiplexed client, and the lengths it draws stay in their range."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from mux_cpu import chunks_of, fake_scheduler, lengths, measure

from proto import scheduler_pb2 as pb


def test_lengths_are_spread_over_half_to_one_and_a_half_times_the_mean():
    got = lengths(2000, 16, seed=3)
    assert got == lengths(2000, 16, seed=3) and min(got) == 8 and max(got) == 24
    assert 15 < sum(got) / len(got) < 17
    assert set(lengths(50, 1)) == {1, 2}


def test_an_answer_is_one_token_a_chunk_and_ends_final():
    req = pb.GenerateRequest(request_id="r", sampling=pb.SamplingParams(max_tokens=3))
    req.token_ids.ids.extend([1, 2])
    got = chunks_of(req)
    assert [list(c.token_ids) for c in got] == [[0], [1], [2]]
    assert [c.finish_reason for c in got] == [0, 0, pb.FINISH_REASON_LENGTH]
    assert got[-1].metrics.prompt_tokens == 2


async def test_a_round_reads_every_chunk_of_every_request(tmp_path):
    target = f"unix:{tmp_path / 's.sock'}"
    async with fake_scheduler(target, step_s=0.001):
        r = await measure(target, streams=4, requests=12, tokens=3, seed=0)
    assert r.requests == 12 and r.chunks == sum(lengths(12, 3, 0))
    assert r.cpu_s > 0 and r.wall_s > 0 and r.cpu_us_per_chunk < r.cpu_us_per_request
