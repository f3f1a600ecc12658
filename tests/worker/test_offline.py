"""The offline loop and ``fastswitch run``: stopping, bad input, the CLI contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from fastswitch.offline import add_run_arguments, generate_offline, run_command
from servekit.validation import validate_generation
from worker_svc.loader import save_hf_directory

from .helpers import prompt_of


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastswitch run")
    add_run_arguments(parser)
    return run_command(parser.parse_args(argv))


def test_stop_tokens_and_eos(tiny: Any) -> None:
    (free,) = generate_offline(tiny, [prompt_of(10)], max_tokens=30, ignore_eos=True)
    stop_at = free.token_ids[5]
    first = free.token_ids.index(stop_at)
    (stopped,) = generate_offline(tiny, [prompt_of(10)], max_tokens=30, stop_token_ids=[stop_at])
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop"
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    # Per-prompt max_tokens.
    results = generate_offline(tiny, [prompt_of(4), prompt_of(6)], max_tokens=[3, 7])
    assert [len(r.token_ids) for r in results] == [3, 7]


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "match"),
    [
        ([], 4, "prompt is empty"),
        ([1, 2], 0, "max_tokens must be a positive integer"),
        ([1, 2], -3, "max_tokens must be a positive integer"),
        (list(range(100)) * 21, 1, "prompt has 2100 tokens but the model's context"),
        ([1] * 2040, 9, r"prompt \(2040 tokens\) \+ max_tokens \(9\) = 2049 exceeds"),
        (
            [1, 262, 5, -1],
            4,
            r"2 token id\(s\) outside the vocabulary \[0, 262\): 262 at 1, -1 at 3",
        ),
    ],
)
def test_bad_input(tiny: Any, prompt: list[int], max_tokens: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_offline(tiny, [prompt], max_tokens=max_tokens)


def test_validation_boundaries() -> None:
    validate_generation([0] * 10, 6, vocab_size=5, max_model_len=16)  # exactly fits
    with pytest.raises(ValueError, match="exceeds"):
        validate_generation([0] * 10, 7, vocab_size=5, max_model_len=16)
    with pytest.raises(ValueError, match="and 2 more"):
        validate_generation([9] * 7, 1, vocab_size=5, max_model_len=16)


def test_bad_loop_parameters(tiny: Any) -> None:
    with pytest.raises(ValueError, match="prefill_chunk"):
        generate_offline(tiny, [[1]], max_tokens=1, prefill_chunk=0)
    with pytest.raises(ValueError, match="needs 2 KV blocks but the pool has 1"):
        generate_offline(tiny, [[1] * 16], max_tokens=1, num_blocks=1)
    with pytest.raises(ValueError, match="one per prompt"):
        generate_offline(tiny, [[1], [2]], max_tokens=[1])


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["--prompt", "Hello", "--max-tokens", "5", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 5 and out["finish_reason"] == "length"
    assert isinstance(out["text"], str)
    expected = generate_offline("tiny", [[256, *b"Hello"]], max_tokens=5, ignore_eos=True)
    assert out["token_ids"] == expected[0].token_ids


def test_cli_token_ids_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--prompt-token-ids",
        "1, 2,3",
        "--max-tokens",
        "4",
        "--temperature",
        "2",
        "--seed",
        "5",
        "--top-k",
        "10",
        "--top-p",
        "0.9",
    ]
    assert run_cli(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("token_ids: ") and "finish_reason: " in first
    assert run_cli(argv) == 0
    assert capsys.readouterr().out == first  # seeded


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt-token-ids", "1,x"], "comma-separated integers"),
        (["--prompt-token-ids", "1,300"], "outside the vocabulary"),
        (["--prompt", "hi", "--max-tokens", "0"], "max_tokens"),
        (["--prompt", "hi", "--max-tokens", "5000"], "exceeds"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--model", "/nonexistent/model"], "neither 'tiny' nor"),
    ],
)
def test_cli_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], match: str
) -> None:
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert captured.err.startswith("fastswitch run: error: ")
    assert pytest.importorskip("re").search(match, captured.err)


def test_cli_directory_without_tokenizer(
    tiny: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, model = tiny
    save_hf_directory(model, spec, tmp_path)
    assert (
        run_cli(
            ["--model", str(tmp_path), "--prompt-token-ids", "1,2", "--max-tokens", "3", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["text"] is None and len(out["token_ids"]) <= 3
    assert run_cli(["--model", str(tmp_path), "--prompt", "hi"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err
