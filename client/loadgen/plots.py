"""PNG figures of one or more runs: TTFT and TBT CDFs (one line per run) and each run's
per-tenant service rate over time. matplotlib is imported only here, on its headless backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from client.loadgen.stats import ServiceTimeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MAX_TENANT_LINES = 12


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
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, title, pick in (
        ("ttft_cdf.png", "Time to first token", lambda d: d.ttft_s),
        ("tbt_cdf.png", "Time between tokens", lambda d: d.tbt_s),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for label, data in runs.items():
            xs = sorted(v * 1e3 for v in pick(data))
            if xs:
                ys = [(k + 1) / len(xs) for k in range(len(xs))]
                ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
        ax.set(xlabel="ms", ylabel="fraction", title=f"{title} (CDF)", ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        if any(pick(d) for d in runs.values()):
            ax.legend(loc="lower right")
            ax.set_xscale("log")
        paths.append(save(fig, out_dir / name))
    for label, data in runs.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        tl = data.timeline
        busiest = sorted(tl.tenants.items(), key=lambda kv: -sum(kv[1]))[:_MAX_TENANT_LINES]
        for tenant, rates in busiest:
            ax.plot([(k + 0.5) * tl.bin_s for k in range(len(rates))], rates, label=tenant)
        if data.arrivals_end_s is not None:
            ax.axvline(data.arrivals_end_s, color="grey", linestyle="--", label="end of arrivals")
        ax.set(
            xlabel="s since the start",
            ylabel="service (weighted tokens/s)",
            title=f"Per-tenant service over time: {label}",
        )
        ax.grid(alpha=0.3)
        if busiest:
            ax.legend(loc="upper right", fontsize="small")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        paths.append(save(fig, out_dir / f"service_{safe}.png"))
    return paths
