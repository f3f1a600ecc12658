"""The PNG figures: readable CDF axes (linear when the range is narrow, log with 1-2-5 labels
otherwise) and one coloured line per tenant on the service plot, the rest summed as "other"."""

from __future__ import annotations

import pytest

from client.loadgen.plots import PlotData, write_plots
from client.loadgen.stats import ServiceTimeline

pytest.importorskip("matplotlib")


def _figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """Keeps each figure's axes as it is saved."""
    from matplotlib.figure import Figure

    saved: list = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self.axes[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def _data(tbt_s: list[float], tenants: int) -> PlotData:
    rates = {f"tenant-{k}": [float(k + 1)] * 4 for k in range(tenants)}
    return PlotData([0.01, 0.02, 0.5], tbt_s, ServiceTimeline(1.0, rates), 3.0)


def test_cdf_axes_and_service_lines(tmp_path, monkeypatch):
    axes = _figures(monkeypatch)
    narrow = [0.010, 0.012, 0.015, 0.02]  # 10-20 ms: linear
    paths = write_plots(tmp_path, {"run": _data(narrow, tenants=14)})
    assert [p.name for p in paths] == ["ttft_cdf.png", "tbt_cdf.png", "service_run.png"]
    ttft, tbt, service = axes
    assert ttft.get_xscale() == "log" and tbt.get_xscale() == "linear"
    labels = [t.get_text() for t in ttft.get_xticklabels() if t.get_text()]
    assert labels and all("$" not in t for t in labels)  # plain numbers, no 10^x mathtext
    assert {"10", "20", "50"} <= set(labels)
    lines = [ln.get_label() for ln in service.get_lines()]
    assert len(lines) == 12  # 10 busiest tenants, "other", the end of arrivals
    assert "other (4 tenants)" in lines and "tenant-13" in lines and "tenant-0" not in lines
    colours = {ln.get_color() for ln in service.get_lines()[:10]}
    assert len(colours) == 10
    assert service.get_legend() is not None


def test_no_samples_still_writes_every_figure(tmp_path):
    paths = write_plots(tmp_path, {"empty": PlotData([], [], ServiceTimeline(1.0, {}))})
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
