"""The metrics docs/metrics.md documents, parsed from its tables (for the tests that check the
services and the Grafana dashboard against it). Importable from every test folder."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "monitoring" / "grafana" / "fastswitch-dashboard.json"

# The doc's section headings, by the service whose /metrics they list.
SECTIONS = {
    "Scheduler": "scheduler",
    "Worker": "worker",
    "KV store": "kvstore",
    "HTTP door": "api",
}
_ROW = re.compile(r"^\| `(fastswitch_[a-z0-9_]+)` \| (counter|gauge|histogram) \|")
_NAME = re.compile(r"\bfastswitch_[a-z0-9_]+")
_TYPE = re.compile(r"^# TYPE (fastswitch_[a-z0-9_]+) (\w+)$", re.MULTILINE)


def documented() -> dict[str, dict[str, str]]:
    """service -> {metric name as scraped (histograms: the base name): its type}."""
    out: dict[str, dict[str, str]] = {s: {} for s in SECTIONS.values()}
    service: str | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:]
            service = next((s for head, s in SECTIONS.items() if title.startswith(head)), None)
            continue
        m = _ROW.match(line)
        if m:
            assert service is not None, f"a metric row outside a service section: {line}"
            out[service][m.group(1)] = m.group(2)
    return out


def exported(text: str) -> dict[str, str]:
    """{name: type} of the fastswitch_* families in a /metrics page (its ``# TYPE`` lines)."""
    return dict(_TYPE.findall(text))


def base_names(expr: str) -> set[str]:
    """The fastswitch_* metric names a PromQL expression reads, histogram suffixes stripped."""
    names = set()
    for name in _NAME.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names
