"""Distributions of lengths and times, written on the command line as ``KIND:ARGS``.

=====================  =============================================================
``64`` / ``const:64``  always 64
``uniform:LO,HI``      uniform on [LO, HI]
``exp:MEAN``           exponential with that mean
``lognormal:MEAN,S``   log-normal with that mean; S is the sigma of the underlying normal
``geom:MEAN``          geometric on 1, 2, 3, ... with that mean (turns per conversation)
=====================  =============================================================

Every draw takes the caller's ``random.Random``, so a workload is a pure function of its seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

KINDS = {"const": 1, "uniform": 2, "exp": 1, "lognormal": 2, "geom": 1}


@dataclass(frozen=True, slots=True)
class Dist:
    """A parsed distribution; build with :func:`parse_dist` (which validates)."""

    kind: str
    params: tuple[float, ...]

    @property
    def mean(self) -> float:
        if self.kind == "uniform":
            return (self.params[0] + self.params[1]) / 2
        return self.params[0]  # const, exp, lognormal and geom are parametrised by their mean

    def sample(self, rng: random.Random) -> float:
        p = self.params
        if self.kind == "const":
            return p[0]
        if self.kind == "uniform":
            return rng.uniform(p[0], p[1])
        if self.kind == "exp":
            return rng.expovariate(1.0 / p[0]) if p[0] > 0 else 0.0
        if self.kind == "lognormal":
            sigma = p[1]
            return rng.lognormvariate(math.log(p[0]) - sigma * sigma / 2, sigma)
        # geom: number of trials up to the first success, success probability 1/mean
        q = 1.0 - 1.0 / p[0]
        if q <= 0:
            return 1.0
        return 1.0 + math.floor(math.log(1.0 - rng.random()) / math.log(q))

    def sample_int(self, rng: random.Random, minimum: int = 1) -> int:
        """A draw rounded to an integer, at least ``minimum``."""
        return max(minimum, round(self.sample(rng)))

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(f'{v:g}' for v in self.params)}"


def parse_dist(text: str) -> Dist:
    """Parses ``KIND:ARGS`` (or a bare number); ValueError naming the text otherwise."""
    kind, sep, rest = text.strip().partition(":")
    if not sep:
        kind, rest = "const", text.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown distribution {text!r}: use one of {', '.join(KINDS)}")
    try:
        params = tuple(float(v) for v in rest.split(","))
    except ValueError:
        raise ValueError(f"bad numbers in distribution {text!r}") from None
    if len(params) != KINDS[kind]:
        raise ValueError(f"distribution {text!r}: {kind} takes {KINDS[kind]} number(s)")
    if any(not math.isfinite(v) or v < 0 for v in params):
        raise ValueError(f"distribution {text!r}: numbers must be finite and >= 0")
    if kind == "uniform" and params[0] > params[1]:
        raise ValueError(f"distribution {text!r}: LO must be <= HI")
    if kind == "lognormal" and params[0] <= 0:
        raise ValueError(f"distribution {text!r}: the mean must be > 0")
    if kind == "geom" and params[0] < 1:
        raise ValueError(f"distribution {text!r}: the mean of geom must be >= 1")
    return Dist(kind, params)
