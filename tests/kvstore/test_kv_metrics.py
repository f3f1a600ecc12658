"""StoreCollector against a real Store: arena bytes, lookups and hits by tier, evictions, and
per-tenant retained bytes with the tenant label capped (the rest summed as "_other")."""

from __future__ import annotations

from kvstore_factories import BLOCK_BYTES, commit_chain, h, make_store
from prometheus_client import CollectorRegistry

from kvstore_svc.metrics import StoreCollector
from servekit.labels import OTHER


def test_arena_lookups_and_capped_tenant_bytes() -> None:
    store = make_store(16, tenant_quota_blocks=3)
    registry = CollectorRegistry()
    collector = StoreCollector(store, max_tenants=2)
    registry.register(collector)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("fastswitch_kvstore_arena_bytes") == 16 * BLOCK_BYTES + 100
    assert value("fastswitch_kvstore_host_blocks_capacity") == 16
    assert value("fastswitch_kvstore_arena_used_bytes") == 0
    commit_chain(store, "a", 2, tenant="a")
    commit_chain(store, "b", 1, tenant="b")
    commit_chain(store, "c", 3, tenant="c")
    commit_chain(store, "d", 2, tenant="d")
    commit_chain(store, "a2", 2, tenant="a")  # a's quota of 3: one of its blocks is evicted
    assert value("fastswitch_kvstore_evictions_total") == 1
    assert value("fastswitch_kvstore_arena_used_bytes") == 9 * BLOCK_BYTES
    # The first scrape of the tenants sees a, b, c, d (by name): a and b keep their own label.
    assert value("fastswitch_kvstore_tenant_retained_bytes", tenant="a") == 3 * BLOCK_BYTES
    assert value("fastswitch_kvstore_tenant_retained_bytes", tenant="b") == BLOCK_BYTES
    assert value("fastswitch_kvstore_tenant_retained_bytes", tenant=OTHER) == 5 * BLOCK_BYTES
    assert value("fastswitch_kvstore_tenant_retained_blocks", tenant=OTHER) == 5
    assert value("fastswitch_kvstore_tenant_retained_bytes", tenant="c") is None
    assert collector.tenants.named() == ("a", "b")

    store.lookup([h("c", 0), h("c", 1), h("nope", 2)])
    store.lookup([h("nope", 0)])
    assert value("fastswitch_kvstore_lookups_total") == 2
    assert value("fastswitch_kvstore_lookup_hit_blocks_total", tier="host") == 2
