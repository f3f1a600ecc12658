"""Prometheus view of the store: read from :meth:`Store.stats` at scrape time (no per-call work).

Names, labels and units are documented in docs/metrics.md. Tenant label values are capped
(``servekit.labels``): the first ``max_tenants`` tenants seen keep their own, the rest are
summed under ``tenant="_other"``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore_svc.store import Store
from servekit.labels import DEFAULT_MAX_TENANTS, BoundedLabels


class StoreCollector(Collector):
    """Registered in the service's registry; runs on the metrics HTTP thread (stats only reads).
    Owns the tenant label assignment (thread-safe), stable for the process's life."""

    def __init__(self, store: Store, *, max_tenants: int = DEFAULT_MAX_TENANTS) -> None:
        self._store = store
        self.tenants = BoundedLabels(max_tenants)

    def collect(self) -> Iterator[Metric]:
        s = self._store.stats()
        blocks = GaugeMetricFamily(
            "fastswitch_kvstore_host_blocks", "Host blocks of the arena by state", labels=["state"]
        )
        blocks.add_metric(["free"], s.free_blocks)
        blocks.add_metric(["reserved"], s.reserved_blocks)
        blocks.add_metric(["committed"], s.committed_blocks)
        blocks.add_metric(["pinned"], s.pinned_blocks)
        blocks.add_metric(["evictable"], s.evictable_blocks)
        yield blocks
        yield GaugeMetricFamily(
            "fastswitch_kvstore_host_blocks_capacity",
            "Host blocks in the arena (0 until the first worker fixes the block size)",
            s.num_host_blocks,
        )
        yield GaugeMetricFamily(
            "fastswitch_kvstore_arena_bytes", "Size of the host arena, bytes", s.arena_bytes
        )
        yield GaugeMetricFamily(
            "fastswitch_kvstore_arena_used_bytes",
            "Bytes of the arena's blocks that are reserved or committed",
            (s.num_host_blocks - s.free_blocks) * s.block_bytes,
        )
        yield GaugeMetricFamily("fastswitch_kvstore_leases_active", "Live leases", s.active_leases)
        yield GaugeMetricFamily("fastswitch_kvstore_workers", "Registered workers", s.workers)
        yield CounterMetricFamily(
            "fastswitch_kvstore_leases_expired", "Leases ended by expiry", s.expired_leases
        )
        yield CounterMetricFamily("fastswitch_kvstore_lookups", "Lookup calls", s.lookups)
        hits = CounterMetricFamily(
            "fastswitch_kvstore_lookup_hit_blocks",
            "Blocks found by lookups, by cache tier",
            labels=["tier"],
        )
        hits.add_metric(["host"], s.lookup_hit_blocks)
        yield hits
        yield CounterMetricFamily(
            "fastswitch_kvstore_evictions", "Committed blocks evicted", s.evictions
        )
        yield CounterMetricFamily(
            "fastswitch_kvstore_expired_blocks",
            "Retained blocks dropped by their ttl",
            s.expired_blocks,
        )
        per_tenant: dict[str, int] = {}
        for usage in s.tenants:
            label = self.tenants.label(usage.tenant)
            per_tenant[label] = per_tenant.get(label, 0) + usage.retained_blocks
        retained = GaugeMetricFamily(
            "fastswitch_kvstore_tenant_retained_blocks",
            "Content-addressed blocks charged to each tenant",
            labels=["tenant"],
        )
        retained_bytes = GaugeMetricFamily(
            "fastswitch_kvstore_tenant_retained_bytes",
            "Bytes of the content-addressed blocks charged to each tenant",
            labels=["tenant"],
        )
        for tenant, n in per_tenant.items():
            retained.add_metric([tenant], n)
            retained_bytes.add_metric([tenant], n * s.block_bytes)
        yield retained
        yield retained_bytes
        yield GaugeMetricFamily(
            "fastswitch_kvstore_tenant_quota_blocks",
            "Retention quota per tenant, blocks; 0 = none",
            self._store.tenant_quota_blocks,
        )
