"""The Grafana dashboard queries only metrics docs/metrics.md documents, through the
${DS_PROMETHEUS} input, with the model and tenant variables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from metrics_doc import DASHBOARD, base_names, documented


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_expression_names_only_documented_metrics() -> None:
    known = {name for names in documented().values() for name in names}
    exprs = [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = base_names(expr)
        assert names, f"an expression that reads no fastswitch metric: {expr}"
        assert names <= known, f"undocumented {sorted(names - known)} in: {expr}"
        used |= names
    for var in _dashboard()["templating"]["list"]:
        assert base_names(var["definition"]) <= known, var["definition"]
    # The panels the issue asks for read these (latency, VTC, swaps, cache, KV usage).
    for name in (
        "fastswitch_time_to_first_token_seconds",
        "fastswitch_inter_token_latency_seconds",
        "fastswitch_tenant_virtual_counter",
        "fastswitch_preemptions_total",
        "fastswitch_worker_swap_bytes_total",
        "fastswitch_cached_prompt_tokens_total",
        "fastswitch_worker_kv_blocks_free",
    ):
        assert name in used, name


def test_datasource_input_and_template_variables() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 39
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"model", "tenant"}
    assert variables["tenant"]["multi"] and variables["tenant"]["includeAll"]
    ids = set()
    for p in _panels(dash["panels"]):
        ids.add(p["id"])
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
    assert len(ids) == len(list(_panels(dash["panels"]))), "panel ids must be unique"
    tenant_panels = [
        p
        for p in _panels(dash["panels"])
        if any('tenant=~"$tenant"' in t["expr"] for t in p.get("targets", []))
    ]
    assert tenant_panels, "no panel follows the tenant variable"
