"""A one-line live progress bar on a terminal (stderr)."""

from __future__ import annotations

import sys
from typing import TextIO

from client.loadgen.runner import Live


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.0f}ms"


def render(live: Live, width: int = 24) -> str:
    """``[#####.....]  12.0/20s  done 140  in flight 12  failed 0  TTFT 85ms  TBT 14ms``."""
    frac = live.elapsed_s / live.duration_s if live.duration_s > 0 else 0.0
    if live.planned:
        frac = max(frac, live.issued / live.planned)
    frac = min(1.0, frac)
    bar = "#" * round(frac * width) + "." * (width - round(frac * width))
    clock = f"{min(live.elapsed_s, live.duration_s):5.1f}/{live.duration_s:g}s"
    if live.elapsed_s > live.duration_s:
        clock += " draining"
    return (
        f"[{bar}] {clock}  done {live.done}  in flight {live.in_flight}  failed {live.failed}"
        f"  TTFT {_ms(live.ttft_p50_s)}  TBT {_ms(live.tbt_mean_s)}"
    )


class ProgressBar:
    """Redraws one line in place; :meth:`close` ends the line."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._width = 0

    def update(self, live: Live) -> None:
        line = render(live)
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self._stream.write("\r" + line + " " * pad)
        self._stream.flush()

    def message(self, text: str) -> None:
        """Prints a line of its own above the bar (redrawn on the next update)."""
        self._stream.write("\r" + text.ljust(self._width) + "\n")
        self._stream.flush()
        self._width = 0

    def close(self) -> None:
        if self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0
