"""kvstore_svc: one per node; owns the shared host arena and its block metadata.

``server`` (process entry, life cycle) -> ``servicer`` (gRPC adapter) -> ``store`` (core: blocks,
leases, content index, pins, eviction, ttl, tenant quotas; no gRPC), with ``records`` (its plain
types), ``workers`` (registrations and the layout), ``committed`` (index, charges, pins), ``checks``
(argument checks), ``leases`` and ``retention`` (the evictable blocks in LRU, per-tenant and per-ttl
order) beside it. ``arena`` holds the arena's layout, which workers import to map it (the one
cross-service import docs/architecture.md allows).
"""
