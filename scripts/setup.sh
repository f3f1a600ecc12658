#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh clone: a virtual environment in .venv with FastSwitch
# installed in editable mode, its pinned dependencies and the dev/test extras. Re-running it only
# installs what is missing. See docs/install.md.
#
#   scripts/setup.sh                 torch as pip resolves it from the configured index (PyPI)
#   scripts/setup.sh --cpu           torch from PyTorch's CPU wheel index (no CUDA libraries)
#   scripts/setup.sh --cuda 12.8     torch from PyTorch's CUDA 12.8 wheel index
#   scripts/setup.sh --dry-run ...   print the commands instead of running them
#
# Only the torch install uses the PyTorch index; everything else comes from the configured one.
# PYTHON picks the interpreter that creates .venv (default python3, at least 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "$0"
  exit "${1:-0}"
}

torch_index=""  # empty: the default, no index of PyTorch's own
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) torch_index=https://download.pytorch.org/whl/cpu ;;
    --cuda)
      [ $# -ge 2 ] || { echo "setup.sh: --cuda needs a version, e.g. --cuda 12.8" >&2; exit 2; }
      if ! [[ "$2" =~ ^[0-9]+\.[0-9]+$ ]]; then
        echo "setup.sh: --cuda wants MAJOR.MINOR (e.g. 12.8), got '$2'" >&2
        exit 2
      fi
      torch_index="https://download.pytorch.org/whl/cu${2/./}"
      shift
      ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage 0 ;;
    *) echo "setup.sh: unknown option '$1'" >&2; usage 2 >&2 ;;
  esac
  shift
done

run() {  # runs a command, or prints it under --dry-run
  if [ "$dry_run" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: FastSwitch needs Python >= 3.11, and '$PY' is not one (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  run "$PY" -m venv .venv
fi
stamp=.venv/.fastswitch-installed  # holds the torch index of the last install (empty: default)
torch_pin=$(sed -n 's/^ *"\(torch==[^"]*\)".*/\1/p' pyproject.toml)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$torch_index" ]; then
  run .venv/bin/python -m pip install --quiet --upgrade pip
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$torch_index" ]; then
    run .venv/bin/python -m pip uninstall --quiet --yes torch  # a build from another index
  fi
  if [ -n "$torch_index" ]; then
    run .venv/bin/python -m pip install --quiet "$torch_pin" --index-url "$torch_index"
  fi
  run .venv/bin/python -m pip install --quiet -e '.[dev]'
  if [ "$dry_run" = 1 ]; then
    echo "+ printf %s '$torch_index' > $stamp"
  else
    printf '%s' "$torch_index" >"$stamp"
  fi
elif [ "$dry_run" = 1 ]; then
  echo "# .venv is up to date: nothing to install"
fi
if [ "$dry_run" = 1 ]; then
  exit 0
fi
echo "ready: $(.venv/bin/python -c 'import torch, grpc; print("torch", torch.__version__, "grpcio", grpc.__version__)')"
