"""Readers of the replayable request traces, and the hash-id-to-token mapping of Mooncake's.

* Azure LLM inference trace 2023 (CSV): ``TIMESTAMP,ContextTokens,GeneratedTokens``, timestamps
  ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits, no zone); the files end without a newline.
* Mooncake FAST'25 (JSONL): ``{"timestamp": ms, "input_length", "output_length", "hash_ids"}``,
  one hash id per 512-token prompt block; equal id prefixes mean equal prompt prefixes.

Bad files raise :class:`TraceError` naming the file and line; nothing here talks to a server.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

MOONCAKE_BLOCK_TOKENS = 512
#: The traces shipped with the load generator as package data (sources, licenses and sha256 in
#: traces_data/README.md), found beside this module in a checkout and in an installed wheel alike.
PACKAGED_TRACES = Path(__file__).resolve().parent / "traces_data"
TRACE_FILES = {  # workload -> file name under PACKAGED_TRACES (or $FASTSWITCH_TRACE_DIR)
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "mooncake": "mooncake/synthetic_trace.jsonl",
}
#: Synthetic token ids are printable ASCII: valid ids of any vocabulary of >= 256 tokens, and
#: bytes that the embedded byte tokenizer turns back into the same ids.
TOKEN_LO, TOKEN_HI = 32, 127


class TraceError(ValueError):
    """A trace file is missing or malformed (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One request of a trace: seconds since the trace's first request, lengths in tokens."""

    t_s: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()


def read_azure(path: Path) -> list[TraceRecord]:
    """Reads an Azure trace CSV; times are relative to the first row."""
    try:
        return _read_azure(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise TraceError(f"{path}: not an Azure trace CSV ({err})") from None


def _read_azure(path: Path) -> list[TraceRecord]:
    rows: list[TraceRecord] = []
    t0: datetime | None = None
    with _open(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        want = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header is None or [h.strip() for h in header] != want:
            raise TraceError(f"{path}:1: expected the header {','.join(want)}, got {header!r}")
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise TraceError(f"{path}:{line}: expected 3 fields, got {len(row)}")
            when = _azure_time(row[0], path, line)
            t0 = when if t0 is None else t0
            rows.append(
                TraceRecord(
                    t_s=(when - t0).total_seconds(),
                    input_len=_count(row[1], "ContextTokens", path, line),
                    output_len=_count(row[2], "GeneratedTokens", path, line),
                )
            )
    if not rows:
        raise TraceError(f"{path}: no requests in the trace")
    return rows


def read_mooncake(path: Path) -> list[TraceRecord]:
    """Reads a Mooncake JSONL trace (timestamps in ms, hash ids of 512-token blocks)."""
    try:
        return _read_mooncake(path)
    except UnicodeDecodeError as err:
        raise TraceError(f"{path}: not a JSONL trace ({err})") from None


def _read_mooncake(path: Path) -> list[TraceRecord]:
    rows: list[TraceRecord] = []
    with _open(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                raise TraceError(f"{path}:{line}: not JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise TraceError(f"{path}:{line}: expected a JSON object")
            missing = [k for k in ("timestamp", "input_length", "output_length") if k not in obj]
            if missing:
                raise TraceError(f"{path}:{line}: missing {', '.join(missing)}")
            hash_ids = obj.get("hash_ids", [])
            if not isinstance(hash_ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
            ):
                raise TraceError(f"{path}:{line}: hash_ids must be a list of integers")
            ts = obj["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not ts >= 0:
                raise TraceError(f"{path}:{line}: timestamp must be a number >= 0, got {ts!r}")
            rows.append(
                TraceRecord(
                    t_s=float(ts) / 1000.0,
                    input_len=_count(obj["input_length"], "input_length", path, line),
                    output_len=_count(obj["output_length"], "output_length", path, line),
                    hash_ids=tuple(hash_ids),
                )
            )
    if not rows:
        raise TraceError(f"{path}: no requests in the trace")
    rows.sort(key=lambda r: r.t_s)  # stable: turns of one conversation keep their order
    return rows


class HashBlockTokens:
    """Maps each Mooncake hash id to a fixed block of token ids, so that equal hash-id prefixes
    become equal token prefixes. ``block_tokens`` is the (possibly scaled) block length; the
    ids of a block depend only on (seed, hash id)."""

    def __init__(self, block_tokens: int = MOONCAKE_BLOCK_TOKENS, seed: int = 0) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self._seed = seed
        self._blocks: dict[int | str, tuple[int, ...]] = {}

    def block(self, key: int | str) -> tuple[int, ...]:
        found = self._blocks.get(key)
        if found is None:
            rng = random.Random(f"{self._seed}:{key}")
            found = tuple(rng.randrange(TOKEN_LO, TOKEN_HI) for _ in range(self.block_tokens))
            self._blocks[key] = found
        return found

    def prompt(self, hash_ids: Sequence[int], length: int, *, salt: str) -> list[int]:
        """``length`` token ids: the blocks of ``hash_ids`` in order, cut at ``length``. A trace
        row with too few ids is completed by blocks unique to ``salt`` (its row)."""
        need = math.ceil(length / self.block_tokens)
        keys: list[int | str] = list(hash_ids[:need])
        keys += [f"{salt}/{j}" for j in range(len(keys), need)]
        out: list[int] = []
        for key in keys:
            out.extend(self.block(key))
        return out[:length]


def default_trace(workload: str) -> Path:
    """The trace a workload replays when no ``--trace`` is given: the file in
    ``$FASTSWITCH_TRACE_DIR`` when that directory has it, else the packaged copy."""
    name = TRACE_FILES.get(workload)
    if name is None:
        raise TraceError(f"the {workload} workload needs --trace FILE")
    env = os.environ.get("FASTSWITCH_TRACE_DIR")
    roots = ([Path(env)] if env else []) + [PACKAGED_TRACES]
    for root in roots:
        if (root / name).is_file():
            return (root / name).resolve()
    raise TraceError(f"cannot find {name} (looked in {', '.join(map(str, roots))}); use --trace")


def _open(path: Path) -> TextIO:
    try:
        return open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"{path}: no such trace file") from None
    except OSError as err:
        raise TraceError(f"{path}: cannot read the trace ({err.strerror})") from None


def _azure_time(text: str, path: Path, line: int) -> datetime:
    """``2023-11-16 18:15:46.6805900`` (datetime takes at most 6 fractional digits)."""
    head, _, frac = text.strip().partition(".")
    try:
        when = datetime.strptime(head, "%Y-%m-%d %H:%M:%S")
        if frac:
            if not frac.isdigit():
                raise ValueError(frac)
            when = when.replace(microsecond=int(frac[:6].ljust(6, "0")))
    except ValueError:
        raise TraceError(f"{path}:{line}: bad TIMESTAMP {text!r}") from None
    return when


def _count(value: object, name: str, path: Path, line: int) -> int:
    try:
        n = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise TraceError(f"{path}:{line}: {name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or n < 0:
        raise TraceError(f"{path}:{line}: {name} must be an integer >= 0, got {value!r}")
    return n
