"""kvstore_svc: one per node; owns the shared host arena and its block metadata.

``server`` (process entry, life cycle) -> ``servicer`` (gRPC adapter) -> ``store`` (core: blocks,
leases, content index, pins, eviction; no gRPC). ``arena`` holds the arena's layout, which
workers import to map it (the one cross-service import DESIGN.md allows).
"""
