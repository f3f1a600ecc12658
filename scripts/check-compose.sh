#!/usr/bin/env bash
# Validates the compose files against the compose specification (CI; no Docker engine needed):
# check-jsonschema ships the schema (--builtin-schema vendor.compose-spec). Where a compose CLI is
# installed, it also parses the files with every profile enabled and variables at their defaults.
# Exit 0 when valid, 1 when not, 2 when check-jsonschema is missing (pip install check-jsonschema).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/check-jsonschema ]; then
  CJ=.venv/bin/check-jsonschema
elif command -v check-jsonschema >/dev/null; then
  CJ=check-jsonschema
else
  echo "check-compose: check-jsonschema is not installed (pip install check-jsonschema)" >&2
  exit 2
fi
files=(docker-compose*.yml)
"$CJ" --builtin-schema vendor.compose-spec "${files[@]}"
args=()
for f in "${files[@]}"; do args+=(--file "$f"); done
if docker compose version >/dev/null 2>&1; then
  docker compose "${args[@]}" --profile gpu --profile bench config --quiet
  echo "docker compose config: ok"
elif command -v docker-compose >/dev/null; then
  docker-compose "${args[@]}" --profile gpu --profile bench config --quiet
  echo "docker-compose config: ok"
fi
