"""Prometheus view of the store: read from :meth:`Store.stats` at scrape time (no per-call work)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore_svc.store import Store


class StoreCollector(Collector):
    """Registered in the service's registry; runs on the metrics HTTP thread (stats only reads)."""

    def __init__(self, store: Store) -> None:
        self._store = store

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
            "fastswitch_kvstore_host_blocks_total", "Host blocks in the arena", s.num_host_blocks
        )
        yield GaugeMetricFamily("fastswitch_kvstore_leases_active", "Live leases", s.active_leases)
        yield GaugeMetricFamily("fastswitch_kvstore_workers", "Registered workers", s.workers)
        yield CounterMetricFamily(
            "fastswitch_kvstore_leases_expired", "Leases ended by expiry", s.expired_leases
        )
        yield CounterMetricFamily("fastswitch_kvstore_lookups", "Lookup calls", s.lookups)
        yield CounterMetricFamily(
            "fastswitch_kvstore_lookup_hit_blocks", "Blocks found by lookups", s.lookup_hit_blocks
        )
        yield CounterMetricFamily(
            "fastswitch_kvstore_evictions", "Committed blocks evicted", s.evictions
        )
        yield CounterMetricFamily(
            "fastswitch_kvstore_expired_blocks",
            "Retained blocks dropped by their ttl",
            s.expired_blocks,
        )
        retained = GaugeMetricFamily(
            "fastswitch_kvstore_tenant_retained_blocks",
            "Content-addressed blocks charged to each tenant",
            labels=["tenant"],
        )
        for usage in s.tenants:
            retained.add_metric([usage.tenant], usage.retained_blocks)
        yield retained
        yield GaugeMetricFamily(
            "fastswitch_kvstore_tenant_quota_blocks",
            "Retention quota per tenant, blocks; 0 = none",
            self._store.tenant_quota_blocks,
        )
