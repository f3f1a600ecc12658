#!/usr/bin/env bash
# Soak with chaos (not in CI): scripts/soak.sh --minutes M --chaos K [--workers N] [--rate R]
# A saturating fairness workload against `fastswitch up`; every K seconds a random worker or the
# store is SIGKILLed. Prints RSS growth per process, requests finished per interval, failures,
# leaked device blocks, store leases and shared-memory files (scripts/soak.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/soak.py "$@"
