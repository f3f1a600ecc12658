"""Trace readers (Azure CSV, Mooncake JSONL) and the hash-id-to-token mapping."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from client.loadgen import traces
from client.loadgen.traces import (
    PACKAGED_TRACES,
    TOKEN_HI,
    TOKEN_LO,
    TRACE_FILES,
    HashBlockTokens,
    TraceError,
    default_trace,
    read_azure,
    read_mooncake,
)

AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _packaged(workload: str) -> Path:
    """The packaged trace of a workload; skips the test where this copy of the project lacks it."""
    path = PACKAGED_TRACES / TRACE_FILES[workload]
    if not path.is_file():
        pytest.skip(f"{path} is not in this copy of the project")
    return path


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_rows_relative_times_and_no_final_newline(tmp_path):
    text = (
        AZURE_HEAD + "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:46.1000000,10,0"  # no newline at the end, as in the real files
    )
    rows = read_azure(_write(tmp_path, "t.csv", text))
    assert [(r.input_len, r.output_len) for r in rows] == [(374, 44), (396, 109), (10, 0)]
    assert rows[0].t_s == 0.0
    assert rows[1].t_s == pytest.approx(4.314579)  # 7 fractional digits, truncated to 6
    assert rows[2].t_s == pytest.approx(59.41941)
    assert all(r.hash_ids == () for r in rows)


def test_real_azure_files_parse_whole():
    # the packaged copies end without a newline; every row must still come through
    conv = read_azure(_packaged("azure-conv"))
    code = read_azure(_packaged("azure-code"))
    assert (len(conv), len(code)) == (19_366, 8_819)
    assert max(r.input_len for r in conv) == 14_050
    assert conv[-1].t_s == pytest.approx(3502, abs=1)
    assert all(b.t_s >= a.t_s for a, b in itertools.pairwise(conv))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected the header"),
        ("time,in,out\n1,2,3", "expected the header"),
        (AZURE_HEAD + "2023-11-16 18:15:46.68,374", ":2: expected 3 fields"),
        (AZURE_HEAD + "yesterday,1,2", ":2: bad TIMESTAMP"),
        (AZURE_HEAD + "2023-11-16 18:15:46.6x,1,2", ":2: bad TIMESTAMP"),
        (AZURE_HEAD + "2023-11-16 18:15:46.1,1,2\n2023-11-16 18:15:47.1,-4,2", ":3: ContextTok"),
        (AZURE_HEAD + "2023-11-16 18:15:46.1,1,lots", ":2: GeneratedTokens must be"),
        (AZURE_HEAD, "no requests"),
    ],
)
def test_azure_malformed(tmp_path, text, message):
    with pytest.raises(TraceError, match=message):
        read_azure(_write(tmp_path, "bad.csv", text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(TraceError, match="no such trace file"):
        read_azure(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="no such trace file"):
        read_mooncake(tmp_path / "nope.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TraceError, match="not a JSONL trace"):
        read_mooncake(binary)


def _jsonl(rows: list[dict[str, object]]) -> str:
    return "\n".join(json.dumps(r) for r in rows)  # no final newline either


def test_mooncake_rows(tmp_path):
    text = _jsonl(
        [
            {"timestamp": 1500, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]},
            {"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [7]},
        ]
    )
    rows = read_mooncake(_write(tmp_path, "t.jsonl", text + "\n\n"))
    assert [r.t_s for r in rows] == [0.0, 1.5]  # sorted by time, ms -> s
    assert rows[1].hash_ids == (0, 1) and rows[1].input_len == 600


def test_real_mooncake_file():
    rows = read_mooncake(_packaged("mooncake"))
    assert len(rows) == 3_993
    assert all(len(r.hash_ids) == -(-r.input_len // 512) for r in rows)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":1: not JSON"),
        ("[1, 2]", ":1: expected a JSON object"),
        ('{"timestamp": 1, "input_length": 3}', ":1: missing output_length"),
        ('{"timestamp": 1, "input_length": 3, "output_length": 1, "hash_ids": ["a"]}', "hash_ids"),
        ('{"timestamp": -1, "input_length": 3, "output_length": 1}', "timestamp must be"),
        ('{"timestamp": 1, "input_length": 2.5, "output_length": 1}', "input_length must be"),
    ],
)
def test_mooncake_malformed(tmp_path, line, message):
    with pytest.raises(TraceError, match=message):
        read_mooncake(_write(tmp_path, "bad.jsonl", line))


def test_hash_ids_reproduce_shared_prefixes():
    blocks = HashBlockTokens(block_tokens=8, seed=3)
    a = blocks.prompt([1, 2, 3], 24, salt="a")
    b = blocks.prompt([1, 2, 9], 20, salt="b")
    c = blocks.prompt([5, 2, 3], 24, salt="c")
    assert len(a) == 24 and len(b) == 20
    assert a[:16] == b[:16] and a[16:] != b[16:20]  # two shared blocks, then different
    assert a[:8] != c[:8] and a[8:] == c[8:]  # same later ids, different prefix: blocks equal
    assert all(TOKEN_LO <= t < TOKEN_HI for t in a + b + c)
    # fixed across instances (and so across runs) for one seed; another seed differs
    assert HashBlockTokens(8, seed=3).prompt([1, 2, 3], 24, salt="x") == a
    assert HashBlockTokens(8, seed=4).prompt([1, 2, 3], 24, salt="x") != a


def test_short_hash_id_lists_are_completed_with_unique_blocks():
    blocks = HashBlockTokens(block_tokens=4)
    a = blocks.prompt([1], 10, salt="row1")
    b = blocks.prompt([1], 10, salt="row2")
    assert len(a) == 10 and a[:4] == b[:4] and a[4:] != b[4:]


def test_real_mooncake_prefix_sharing_survives_scaling():
    rows = read_mooncake(_packaged("mooncake"))
    blocks = HashBlockTokens(block_tokens=32)  # 512 tokens scaled by 1/16
    first: dict[int, tuple[int, list[int]]] = {}
    shared = 0
    for k, r in enumerate(rows[:400]):
        ids = blocks.prompt(r.hash_ids, r.input_len // 16, salt=str(k))
        if not r.hash_ids:
            continue
        seen = first.get(r.hash_ids[0])
        if seen is not None:
            other_ids, other = rows[seen[0]].hash_ids, seen[1]
            same = next(
                (j for j, (x, y) in enumerate(zip(r.hash_ids, other_ids, strict=False)) if x != y),
                min(len(r.hash_ids), len(other_ids)),
            )
            n = min(same * 32, len(ids), len(other))
            assert ids[:n] == other[:n]
            shared += n > 0
        else:
            first[r.hash_ids[0]] = (k, ids)
    assert shared > 10  # the trace's multi-turn reuse is there


def test_default_trace_lookup(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSWITCH_TRACE_DIR", str(tmp_path))
    (tmp_path / "AzureLLMInferenceTrace_code.csv").write_text(AZURE_HEAD)
    assert default_trace("azure-code") == (tmp_path / "AzureLLMInferenceTrace_code.csv")
    with pytest.raises(TraceError, match="needs --trace"):
        default_trace("fairness")


def test_trace_dir_without_the_file_falls_back_to_the_packaged_copy(monkeypatch, tmp_path):
    packaged = _packaged("mooncake").resolve()
    monkeypatch.setenv("FASTSWITCH_TRACE_DIR", str(tmp_path))
    assert default_trace("mooncake") == packaged


def test_no_trace_anywhere_names_every_place_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTSWITCH_TRACE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(traces, "PACKAGED_TRACES", tmp_path / "packaged")
    with pytest.raises(TraceError, match=r"cannot find AzureLLMInferenceTrace_conv\.csv") as err:
        default_trace("azure-conv")
    assert str(tmp_path / "mine") in str(err.value) and str(tmp_path / "packaged") in str(err.value)
    assert "use --trace" in str(err.value)
