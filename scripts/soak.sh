#!/usr/bin/env bash
# Soak with chaos (not in CI):
#   scripts/soak.sh --minutes M --chaos K [--workers N] [--rate R] [--memtrace S]
# A saturating fairness workload against `fastswitch up`; every K seconds a random worker or the
# store is SIGKILLed. Prints RSS growth per process, requests finished and in flight per
# interval, failures, leaked device blocks, store leases and shared-memory files; with
# --memtrace, the scheduler's heap and table sizes every S seconds (scripts/soak.py,
# docs/failures.md "Memory").
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/soak.py "$@"
