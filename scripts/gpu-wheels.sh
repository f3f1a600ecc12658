#!/usr/bin/env bash
# Downloads, on a machine with network access, the wheels that an offline GPU machine lacks, for
# that machine's Python (CPython 3.12, x86-64 manylinux by default), into a folder that travels
# with the checkout (default .whl/, git-ignored). scripts/gpu-check.sh installs them there with
# pip --no-index. torch is never downloaded: the GPU machine's own CUDA build is used.
#
#   scripts/gpu-wheels.sh [DIR]
#
# Environment: PYTHON (a python with pip; default .venv/bin/python, else python3),
# PY_VERSION (the GPU machine's Python, default 3.12).
#
# What travels, and why (everything else the GPU tests and benchmarks import -- numpy,
# safetensors, tokenizers, jinja2, uvloop, msgpack, nvidia-ml-py, prometheus-client, pytest,
# pytest-timeout -- is expected on a CUDA image; gpu-check.sh says which one is missing):
#   grpcio, protobuf        the generated stubs in proto/ refuse older runtimes (grpcio >= the
#                           grpcio-tools that made them, protobuf >= their gencode version)
#   grpcio-health-checking, grpcio-reflection   every service serves both
#   pytest-asyncio          the async tests (asyncio_mode = auto in pyproject.toml)
# One version of each (two stop the install); keep the pins in step with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-.whl}
if [[ -n ${PYTHON:-} ]]; then
  python=$PYTHON
elif [[ -x .venv/bin/python ]]; then
  python=.venv/bin/python
else
  python=python3
fi
py_version=${PY_VERSION:-3.12}

wheels=(
  grpcio==1.85.3
  grpcio-health-checking==1.85.1
  grpcio-reflection==1.85.1
  protobuf==7.36.2
  pytest-asyncio==1.5.0
)
platform_args=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platform_args+=(--platform "$p")
done

mkdir -p "$dir"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$py_version" --implementation cp "${platform_args[@]}" \
  --dest "$dir" "${wheels[@]}"

echo "wheels in $dir for CPython $py_version (x86-64):"
total=0
for whl in "$dir"/*.whl; do
  size=$(stat -c %s "$whl")
  total=$((total + size))
  printf '  %8d KiB  %s\n' $((size / 1024)) "$(basename "$whl")"
done
printf '  %8d KiB  total\n' $((total / 1024))
