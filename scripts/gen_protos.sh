#!/usr/bin/env bash
# Regenerates the Python stubs in proto/ from proto/*.proto. Never edit *_pb2*.py by hand.
# Imports in the generated code are package-qualified (`from proto import x_pb2`) because the
# include root is the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  proto/scheduler.proto proto/worker.proto proto/kvstore.proto
echo "regenerated: $(ls proto/*_pb2*.py | tr '\n' ' ')"
