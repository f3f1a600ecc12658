#!/usr/bin/env bash
# The CUDA paths measured on a real accelerator, in one command (docs/gpu.md):
#
#   scripts/gpu-check.sh [WHEEL_DIR]
#
# On a machine with a CUDA device and no network, with that machine's own python3 and CUDA
# torch (never the repo's .venv; nothing is downloaded or generated): installs the wheels that
# scripts/gpu-wheels.sh prepared (WHEEL_DIR, default .whl/ when present) into a temporary
# folder on PYTHONPATH, then runs, each stage under its own timeout and all under one budget:
#
#   1. every gpu-marked test (pinned arena, side-stream swaps, CUDA IPC pool handles, the
#      cross-worker resume with identical greedy tokens, bf16 forward)
#   2. benchmarks/swap_bandwidth.py --device cuda, LLaMA-3-8B geometry: block-group vs
#      per-layer vs one large copy, pinned and pageable
#   3. benchmarks/context_switch.py --device cuda --geometry llama3-8b-kv --quick:
#      fastswitch vs vllm-baseline tail TTFT/TBT and swap stall share
#
# Every table goes to ONE markdown file: $RESULTS, else $OUT/gpu-results.md when $OUT is set,
# else gpu-results.md. Without a CUDA device it prints that it skipped and exits 0.
# Exit status: 0 when every stage passed, 1 otherwise (the results file says which).
#
# Environment: PYTHON (default python3), BUDGET_S (whole run, default 450), RESULTS,
# CTX_VARIANTS (default fastswitch,vllm-baseline; add fs-no-retain when time allows),
# SWAP_CONTEXTS (default 512,2048,4096,8192), CTX_EXTRA (more context_switch.py flags).
# DEVICE=cpu is a dry run of the script itself on a machine without CUDA: the gpu-marked tests
# skip and the benchmarks run on the CPU (give small SWAP_CONTEXTS and CTX_EXTRA there).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

python=${PYTHON:-python3}
budget_s=${BUDGET_S:-450}
device=${DEVICE:-cuda}
ctx_variants=${CTX_VARIANTS:-fastswitch,vllm-baseline}
swap_contexts=${SWAP_CONTEXTS:-512,2048,4096,8192}
read -r -a ctx_extra <<<"${CTX_EXTRA:-}"
wheel_dir=${1:-}
if [[ -z $wheel_dir && -d .whl ]]; then
  wheel_dir=.whl
fi

if [[ $device != cpu ]] &&
  ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    >/dev/null 2>&1; then
  echo "gpu-check: skipped: no CUDA device ($python has no torch, or torch.cuda.is_available()" \
    "is False); nothing was run"
  exit 0
fi

started=$SECONDS
results=${RESULTS:-${OUT:+$OUT/}gpu-results.md}
run_id="gpu-check-$$-$RANDOM"
site=$(mktemp -d "${TMPDIR:-/tmp}/fastswitch-gpu-site.XXXXXX")
stage_log=$(mktemp "${TMPDIR:-/tmp}/fastswitch-gpu-stage.XXXXXX")
failed=()

marked() { # pids of the processes that carry this run's marker, i.e. that this script started
  local environ pid
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    if [[ $pid != "$$" ]] && grep -qzx "GPU_CHECK_RUN=$run_id" "$environ" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

sweep() {
  # Ends what a stage left behind: a timed-out benchmark's deployment runs in process groups of
  # its own. SIGTERM first (each service then removes its shared-memory files), SIGKILL after
  # 10 s.
  local pids tries
  mapfile -t pids < <(marked)
  ((${#pids[@]} == 0)) && return
  kill -TERM "${pids[@]}" 2>/dev/null
  for ((tries = 0; tries < 20; tries++)); do
    mapfile -t pids < <(marked)
    ((${#pids[@]} == 0)) && return
    sleep 0.5
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  sweep
  rm -rf "$site" "$stage_log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { printf '%s\n' "$*" >>"$results"; }

fenced() { # the last $1 lines of $2, fenced
  note '```text'
  tail -n "$1" "$2" >>"$results"
  note '```'
}

# stage TITLE LIMIT_S TAIL_LINES COMMAND...: runs COMMAND under min(LIMIT_S, what the budget
# has left), appends its status and output to the results file.
stage() {
  local title=$1 limit=$2 lines=$3
  shift 3
  local left=$((budget_s - (SECONDS - started) - 10))
  note ""
  note "## $title"
  note ""
  note "\`$*\`"
  note ""
  if ((left < 30)); then
    note "**not run**: the ${budget_s} s budget is spent"
    failed+=("$title (not run)")
    echo "gpu-check: $title: not run, budget spent"
    return
  fi
  ((limit > left)) && limit=$left
  echo "gpu-check: $title (at most ${limit} s) ..."
  local t0=$SECONDS rc
  GPU_CHECK_RUN=$run_id PYTHONUNBUFFERED=1 timeout --kill-after=15 "$limit" "$@" \
    >"$stage_log" 2>&1
  rc=$?
  sweep
  local status="ok"
  if ((rc == 124 || rc == 137)); then
    status="**timed out** after ${limit} s"
  elif ((rc != 0)); then
    status="**failed** (exit $rc)"
  fi
  ((rc != 0)) && failed+=("$title")
  note "$status, $((SECONDS - t0)) s"
  fenced "$lines" "$stage_log"
  echo "gpu-check: $title: $status"
}

: >"$results" || exit 1
note "# FastSwitch on a GPU: scripts/gpu-check.sh"
note ""
note "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
  git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)'
), $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${budget_s} s"

if [[ -n $wheel_dir ]]; then
  shopt -s nullglob
  wheels=("$wheel_dir"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]} == 0)); then
    echo "gpu-check: no wheels in $wheel_dir (run scripts/gpu-wheels.sh where there is network)" >&2
    exit 1
  fi
  if ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" >"$stage_log" 2>&1; then
    cat "$stage_log" >&2
    echo "gpu-check: installing the wheels of $wheel_dir failed" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"

note ""
note "## Environment"
note ""
"$python" - >"$stage_log" 2>&1 <<'EOF'
import importlib, platform, subprocess, sys

import torch

print(f"python {platform.python_version()} ({sys.executable}), {platform.machine()}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"device 0: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs")
else:
    print("no CUDA device: a dry run on the CPU (DEVICE=cpu)")
try:
    print(subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version,pcie.link.gen.max,pcie.link.width.max",
         "--format=csv"], capture_output=True, text=True, timeout=20).stdout.strip())
except (OSError, subprocess.SubprocessError) as err:
    print(f"nvidia-smi: {err}")
missing = []
for module in ("grpc", "grpc_health.v1.health", "grpc_reflection.v1alpha.reflection",
               "google.protobuf", "pytest", "pytest_asyncio", "pytest_timeout", "uvloop",
               "msgpack", "pynvml", "prometheus_client", "safetensors", "tokenizers", "jinja2",
               "numpy", "proto.scheduler_pb2_grpc", "proto.worker_pb2_grpc", "proto.kvstore_pb2_grpc"):
    try:
        m = importlib.import_module(module)
        print(f"  {module} {getattr(m, '__version__', '')}".rstrip())
    except Exception as err:  # reported: the stages would fail on it
        missing.append(module)
        print(f"  {module}: MISSING ({type(err).__name__}: {err})")
sys.exit(1 if missing else 0)
EOF
env_rc=$?
fenced 200 "$stage_log"
cat "$stage_log"
if ((env_rc != 0)); then
  note "**stopped**: a module the stages need is missing (scripts/gpu-wheels.sh, docs/gpu.md)"
  echo "gpu-check: a module the stages need is missing; see $results" >&2
  exit 1
fi

mapfile -t gpu_tests < <(grep -rlE --include='test_*.py' 'mark\.gpu' tests | sort)
stage "1. gpu-marked tests" 180 80 \
  "$python" -m pytest -q -p no:cacheprovider -m gpu -rA "${gpu_tests[@]}"
stage "2. swap bandwidth, LLaMA-3-8B geometry (fp16, 2 MiB blocks)" 120 40 \
  "$python" benchmarks/swap_bandwidth.py --device "$device" --contexts "$swap_contexts" \
  --repeats 5 --group-blocks 4 --pageable
stage "3. context switching, llama3-8b-kv model (bf16)" 240 60 \
  "$python" benchmarks/context_switch.py --quick --device "$device" --geometry llama3-8b-kv \
  --host-kv-gib 4 --variants "$ctx_variants" "${ctx_extra[@]}"

note ""
if ((${#failed[@]} == 0)); then
  note "all stages passed in $((SECONDS - started)) s"
  echo "gpu-check: all stages passed in $((SECONDS - started)) s; results in $results"
  exit 0
fi
note "not passed: $(printf '%s; ' "${failed[@]}")"
echo "gpu-check: not passed: $(printf '%s; ' "${failed[@]}")results in $results" >&2
exit 1
