"""PNG figures of one or more runs: TTFT and TBT CDFs (one line per run) and each run's
per-tenant service rate over time. matplotlib is imported only here, on its headless backend."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from client.loadgen.stats import ServiceTimeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_MAX_TENANT_LINES = 10  # one colour each of the qualitative map; the rest are summed as "other"
_LINEAR_SPAN = 20.0  # a CDF whose max/min is within this gets a linear ms axis, else log


@dataclass(frozen=True, slots=True)
class PlotData:
    ttft_s: Sequence[float]
    tbt_s: Sequence[float]
    timeline: ServiceTimeline
    arrivals_end_s: float | None = None  # marked on the service plot


def check_plotting() -> None:
    """RuntimeError when matplotlib is missing (checked before a run, not after)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError("--plot needs matplotlib (pip install 'fastswitch[plot]')") from None


def write_plots(out_dir: Path, runs: Mapping[str, PlotData]) -> list[Path]:
    """Writes ttft_cdf.png, tbt_cdf.png and service_<label>.png; returns the paths."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Figure, path: Path) -> Path:
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")  # keeps a legend beside the axes
        plt.close(fig)
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, title, pick in (
        ("ttft_cdf.png", "Time to first token", lambda d: d.ttft_s),
        ("tbt_cdf.png", "Time between tokens", lambda d: d.tbt_s),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        _cdf(ax, {label: pick(data) for label, data in runs.items()})
        ax.set_title(f"{title} (CDF)")
        paths.append(save(fig, out_dir / name))
    for label, data in runs.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        _service(ax, data)
        ax.set_title(f"Per-tenant service over time: {label}")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        paths.append(save(fig, out_dir / f"service_{safe}.png"))
    return paths


def _cdf(ax: Axes, runs: Mapping[str, Sequence[float]]) -> None:
    """One step line per run, in ms: a linear axis when the values span less than
    _LINEAR_SPAN, else a log axis with 1-2-5 ticks labelled as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = None, None
    for label, values in runs.items():
        xs = sorted(v * 1e3 for v in values)
        if not xs:
            continue
        ys = [(k + 1) / len(xs) for k in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
        positive = [x for x in xs if x > 0]
        if positive:
            lo = min(positive[0], lo or positive[0])
            hi = max(xs[-1], hi or xs[-1])
    ax.set(xlabel="ms", ylabel="fraction of samples", ylim=(0, 1.01))
    ax.grid(alpha=0.3, which="major")
    if lo is None or hi is None:
        ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        return
    ax.legend(loc="lower right")
    if hi / lo <= _LINEAR_SPAN:
        ax.set_xlim(left=0)
        return
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.2, hi * 1.2)
    decades = math.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _service(ax: Axes, data: PlotData) -> None:
    """A line per tenant (the busiest _MAX_TENANT_LINES; the rest summed as one dashed line),
    coloured from a qualitative map, with a legend."""
    import matplotlib

    tl = data.timeline
    xs = [(k + 0.5) * tl.bin_s for k in range(len(next(iter(tl.tenants.values()), [])))]
    ranked = sorted(tl.tenants.items(), key=lambda kv: -sum(kv[1]))
    shown, rest = ranked[:_MAX_TENANT_LINES], ranked[_MAX_TENANT_LINES:]
    if len(rest) == 1:  # a line of its own costs no more than an "other" line
        shown, rest = ranked, []
    cmap = matplotlib.colormaps["tab10" if len(shown) <= 10 else "tab20"]
    for k, (tenant, rates) in enumerate(sorted(shown)):
        ax.plot(xs, rates, color=cmap(k % cmap.N), linewidth=1.6, label=tenant)
    if rest:
        other = [sum(rates[k] for _, rates in rest) for k in range(len(xs))]
        ax.plot(
            xs,
            other,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"other ({len(rest)} tenants)",
        )
    if data.arrivals_end_s is not None:
        ax.axvline(data.arrivals_end_s, color="dimgrey", linestyle=":", label="end of arrivals")
    ax.set(xlabel="s since the start", ylabel="service (weighted tokens/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if shown:  # beside the plot, not over the lines
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
