#!/usr/bin/env bash
# Validates the compose files against the compose specification (CI; no Docker engine needed):
# check-jsonschema ships the schema (--builtin-schema vendor.compose-spec). Where a compose CLI is
# installed, it also parses the files with every profile enabled and variables at their defaults,
# all files merged (the overrides, e.g. docker-compose.model.yml, over docker-compose.yml), each
# override also on its own over docker-compose.yml.
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
files=(docker-compose.yml)
for f in docker-compose.*.yml; do [ -e "$f" ] && files+=("$f"); done
"$CJ" --builtin-schema vendor.compose-spec "${files[@]}"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  exit 0
fi
# A value for the variables that the files require (${VAR:?}); nothing is mounted or started here.
export FASTSWITCH_MODEL_DIR=${FASTSWITCH_MODEL_DIR:-/nonexistent/model}
export FASTSWITCH_DEPLOYMENT_SECRET=${FASTSWITCH_DEPLOYMENT_SECRET:-check-compose-placeholder-secret}
export FASTSWITCH_API_KEYS_DIR=${FASTSWITCH_API_KEYS_DIR:-/nonexistent/keys}
profiles=(--profile gpu --profile bench --profile monitoring)
all=()
for f in "${files[@]}"; do all+=(--file "$f"); done
"${compose[@]}" "${all[@]}" "${profiles[@]}" config --quiet
for f in "${files[@]:1}"; do
  "${compose[@]}" --file docker-compose.yml --file "$f" "${profiles[@]}" config --quiet
done
echo "${compose[*]} config (${files[*]}): ok"
