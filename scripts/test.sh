#!/usr/bin/env bash
# The test command (README, CI): set up, check that generated stubs match the protos, lint,
# type-check the hand-written code, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PYTHON=.venv/bin/python scripts/gen_protos.sh >/dev/null
if ! git diff --quiet -- proto/ 2>/dev/null; then
  echo "proto stubs are stale: run scripts/gen_protos.sh and commit the result" >&2
  git diff --stat -- proto/ >&2
  exit 1
fi
.venv/bin/ruff check .
.venv/bin/mypy scheduler_svc worker_svc kvstore_svc servekit client fastswitch api_svc
exec .venv/bin/python -m pytest -q "$@"
