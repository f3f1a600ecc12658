"""Why a CPU worker sets glibc's non-temporal threshold (servekit/memcpy_tuning.py): one region
moved as copies of a block group's size, against the same bytes in one copy, with glibc's default
threshold and with the worker's, side by side in one run.

Each setting runs in a process of its own (the tunable is read at process start), on the same
pre-faulted buffers size; the two alternate for ``--repeats`` rounds so that drift on a shared
machine hits both. Per round and setting: GB/s of one ``memmove`` of ``--mib`` MiB, and of the
same bytes as shuffled ``--copy-mib`` MiB copies (what a swap of scattered block groups does),
and their ratio. Printed: medians over rounds.

    .venv/bin/python benchmarks/memcpy_threshold.py [--mib 512] [--copy-mib 8] [--repeats 7]

About 20 s here. Only x86 glibc has the tunable; elsewhere both columns are glibc's default.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import time

from servekit.memcpy_tuning import OPT_OUT, TUNABLE, tuned_env


def _measure(mib: int, copy_mib: int, rounds: int) -> list[tuple[float, float]]:
    """(one copy GB/s, chunked GB/s) per round, in this process."""
    size, chunk = mib << 20, copy_mib << 20
    src, dst = bytearray(b"\1" * size), bytearray(b"\2" * size)  # touched: pre-faulted
    s_ptr = ctypes.addressof(ctypes.c_char.from_buffer(src))
    d_ptr = ctypes.addressof(ctypes.c_char.from_buffer(dst))
    order = list(range(size // chunk))
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        ctypes.memmove(d_ptr, s_ptr, size)
        one = size / (time.perf_counter() - t) / 1e9
        random.shuffle(order)
        t = time.perf_counter()
        for k, j in enumerate(order):
            ctypes.memmove(d_ptr + k * chunk, s_ptr + j * chunk, chunk)
        out.append((one, size / (time.perf_counter() - t) / 1e9))
    return out


def _child(args: argparse.Namespace, tuned: bool) -> list[tuple[float, float]]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tuned:
        env = tuned_env({**env, OPT_OUT: "1"}) or env
    cmd = [sys.executable, __file__, "--child", "--mib", str(args.mib)]
    cmd += ["--copy-mib", str(args.copy_mib), "--repeats", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=300)
    return [tuple(r) for r in json.loads(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mib", type=int, default=512, help="bytes moved per copy pattern (MiB)")
    p.add_argument("--copy-mib", type=int, default=8, help="size of each small copy (MiB)")
    p.add_argument("--repeats", type=int, default=7, help="rounds; medians (>= 1)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.mib < args.copy_mib or args.copy_mib < 1:
        p.error("--repeats >= 1 and --mib >= --copy-mib >= 1")
    if args.child:
        print(json.dumps(_measure(args.mib, args.copy_mib, args.repeats)))
        return 0
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for i in range(args.repeats):
        for tuned in (False, True) if i % 2 == 0 else (True, False):
            runs[tuned] += _child(args, tuned)
    setting = (tuned_env({OPT_OUT: "1"}) or {}).get("GLIBC_TUNABLES", "(no tunable here)")
    print(f"{args.mib} MiB as one copy and as {args.copy_mib} MiB copies; {args.repeats} rounds")
    print(f"{'glibc':<48} {'one GB/s':>9} {'chunked GB/s':>13} {'chunked/one':>12}")
    for tuned, label in ((False, f"{TUNABLE}: default"), (True, setting)):
        one = statistics.median(r[0] for r in runs[tuned])
        chunked = statistics.median(r[1] for r in runs[tuned])
        ratio = statistics.median(r[1] / r[0] for r in runs[tuned])
        print(f"{label:<48} {one:>9.2f} {chunked:>13.2f} {ratio:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
