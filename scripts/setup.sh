#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh clone: a virtual environment in .venv with FastSwitch
# installed in editable mode, its pinned dependencies (torch==2.13.0: the CPU build here) and the
# dev/test extras. Re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fastswitch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
echo "ready: $(.venv/bin/python -c 'import torch, grpc; print("torch", torch.__version__, "grpcio", grpc.__version__)')"
