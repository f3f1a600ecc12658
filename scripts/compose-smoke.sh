#!/usr/bin/env bash
# The compose stack, built and run for real (docs/compose.md):
#   engine (started here when none answers) -> base image -> offline wheels -> image
#   -> (monitoring) the Prometheus image from Debian's package, its config checked by promtool
#   -> stack up (KV store, scheduler, FASTSWITCH_SMOKE_WORKERS workers, Prometheus) -> every
#   container healthy -> the arena is the shm size less the reserve -> the published port
#   answers and lists every worker -> the internal plane is unpublished and refuses a caller
#   without the deployment secret (generated here) -> every Prometheus target up -> a short fastswitch-bench
#   through the stack (it waits for the workers itself) -> its report checked -> no error in any
#   log -> clean stop (exit 0 on SIGTERM) -> down.
# Exit 0 only when every check passed. Needs root only to install or start an engine.
#
# Environment (all optional):
#   FASTSWITCH_SMOKE_WORKERS   worker replicas (2)
#   FASTSWITCH_SMOKE_REQUESTS  requests of the bench run (30, 12 per second)
#   FASTSWITCH_SMOKE_REQUIRE_SWAPS=0  do not fail when the run had no swap-out and swap-in
#                              (default: it must: they move KV through the shared host arena)
#   FASTSWITCH_SMOKE_IMAGE     tag of the image built here (fastswitch:smoke)
#   FASTSWITCH_BASE_IMAGE      base of the image; default fastswitch-base:bookworm, made here with
#                              debootstrap when missing (no registry needed)
#   FASTSWITCH_SMOKE_CACHE     root file system, logs, dockerd log (/var/tmp/fastswitch-smoke)
#   FASTSWITCH_DOCKERD_STORAGE storage driver of a dockerd started here (overlay2 when the kernel
#                              has overlayfs, else vfs; overlay2 falls back to vfs if it fails)
#   FASTSWITCH_DEBIAN_MIRROR   debootstrap mirror (http://deb.debian.org/debian)
#   FASTSWITCH_SMOKE_MONITORING=0  no `monitoring` profile (no Prometheus image, no target check)
#   FASTSWITCH_SMOKE_PROMETHEUS_IMAGE  tag of the Prometheus image built here
#                              (fastswitch-prometheus:smoke); its build runs apt-get against the
#                              base image's Debian mirror, with the host's network
#   FASTSWITCH_SMOKE_TARGETS_TIMEOUT  seconds for every Prometheus target to be up (120)
#   FASTSWITCH_SMOKE_KEEP=1    leave the stack running (and the engine) for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WORKERS=${FASTSWITCH_SMOKE_WORKERS:-2}
REQUESTS=${FASTSWITCH_SMOKE_REQUESTS:-30}
REQUIRE_SWAPS=${FASTSWITCH_SMOKE_REQUIRE_SWAPS:-1}
IMAGE=${FASTSWITCH_SMOKE_IMAGE:-fastswitch:smoke}
CACHE=${FASTSWITCH_SMOKE_CACHE:-/var/tmp/fastswitch-smoke}
MIRROR=${FASTSWITCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROJECT=fastswitch-smoke
START_TIMEOUT=${FASTSWITCH_SMOKE_START_TIMEOUT:-300}
KEEP=${FASTSWITCH_SMOKE_KEEP:-0}
MONITORING=${FASTSWITCH_SMOKE_MONITORING:-1}
PROM_IMAGE=${FASTSWITCH_SMOKE_PROMETHEUS_IMAGE:-fastswitch-prometheus:smoke}
TARGETS_TIMEOUT=${FASTSWITCH_SMOKE_TARGETS_TIMEOUT:-120}

T0=$SECONDS
PHASE_T=$SECONDS
TIMINGS=()
DOCKERD_PID=
STACK_UP=0
COMPOSE=()
UP_PROFILES=()                 # compose up: not the bench, which runs once, below
[ "$MONITORING" = 1 ] && UP_PROFILES+=(--profile monitoring)
PROFILES=(--profile bench "${UP_PROFILES[@]}")
mkdir -p "$CACHE"
RUN_DIR=$(mktemp -d "$CACHE/run.XXXXXX")

log() { printf '[smoke %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}
phase_done() {
  TIMINGS+=("$1 $((SECONDS - PHASE_T))s")
  PHASE_T=$SECONDS
}
as_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (or start a Docker engine first)"; }
apt_install() {
  as_root "installing $*"
  log "apt-get install $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# One smoke run at a time on a machine: they share the engine and the project name.
exec 9>"$CACHE/lock"
flock -w 1800 9 || die "another smoke run holds $CACHE/lock"

cleanup() {
  local rc=$?
  set +e
  if [ "$KEEP" = 1 ] && [ "$STACK_UP" = 1 ]; then
    log "FASTSWITCH_SMOKE_KEEP=1: the stack (project $PROJECT) and the engine are left running"
    exit "$rc"
  fi
  if [ "$STACK_UP" = 1 ]; then
    "${COMPOSE[@]}" "${PROFILES[@]}" down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping the dockerd started here (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    # What dockerd leaves mounted after it stops.
    for m in /run/docker/netns/default /var/lib/docker; do
      mountpoint -q "$m" 2>/dev/null && umount "$m"
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- engine and compose
start_dockerd() {
  local driver=$1
  log "starting dockerd (storage driver $driver, no iptables, no default bridge)"
  rm -f /var/run/docker.pid
  dockerd --storage-driver="$driver" --iptables=false --ip6tables=false --bridge=none \
    --host=unix:///var/run/docker.sock >>"$CACHE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  kill -TERM "$DOCKERD_PID" 2>/dev/null
  wait "$DOCKERD_PID" 2>/dev/null || true
  DOCKERD_PID=
  return 1
}

ensure_engine() {
  if ! command -v docker >/dev/null || { ! docker info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; }; then
    apt_install docker.io
  fi
  if docker info >/dev/null 2>&1; then
    log "using the running Docker engine ($(docker info --format '{{.ServerVersion}}, {{.Driver}}'))"
    return
  fi
  as_root "starting dockerd"
  local driver=${FASTSWITCH_DOCKERD_STORAGE:-}
  if [ -z "$driver" ]; then
    driver=vfs
    grep -qw overlay /proc/filesystems && driver=overlay2
  fi
  if ! start_dockerd "$driver"; then
    [ "$driver" = vfs ] && die "dockerd did not start (see $CACHE/dockerd.log)"
    log "dockerd with $driver did not start; trying vfs"
    start_dockerd vfs || die "dockerd did not start (see $CACHE/dockerd.log)"
  fi
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    command -v docker-compose >/dev/null || apt_install docker-compose
    COMPOSE=(docker-compose)
  fi
  COMPOSE+=(--project-name "$PROJECT" --file "$ROOT/docker-compose.yml")
  log "compose: ${COMPOSE[*]:0:2} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"
}

# ---------------------------------------------------------------- images
ensure_base_image() {
  BASE_IMAGE=${FASTSWITCH_BASE_IMAGE:-fastswitch-base:bookworm}
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
    return
  fi
  [ -z "${FASTSWITCH_BASE_IMAGE:-}" ] || die "base image $BASE_IMAGE not found"
  command -v debootstrap >/dev/null || apt_install debootstrap
  as_root "debootstrap"
  local rootfs="$CACHE/rootfs"
  rm -rf "$rootfs"
  log "debootstrap bookworm (minbase + python3) from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
    bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    die "debootstrap failed (see $CACHE/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "imported $BASE_IMAGE"
}

# The image installs with --no-index from build/wheels: the pinned dependencies (torch==2.13.0
# resolves through pip's configuration, a CPU wheel where that offers one) for the base image's
# Python, plus the build backend.
download_wheels() {
  local pip py pyver
  if [ -x "$ROOT/.venv/bin/python" ]; then py="$ROOT/.venv/bin/python"; else py=python3; fi
  pip=("$py" -m pip)
  pyver=$(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" \
    -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  local deps
  mapfile -t deps < <("$py" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$ROOT/pyproject.toml")
  log "pip download: ${#deps[@]} dependencies for Python $pyver into build/wheels"
  rm -rf "$ROOT/build/wheels.new"
  if ! "${pip[@]}" download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version "$pyver" --dest "$ROOT/build/wheels.new" \
    "${deps[@]}" 'setuptools>=68' wheel >"$RUN_DIR/pip-download.log" 2>&1; then
    cat "$RUN_DIR/pip-download.log" >&2
    die "pip download failed"
  fi
  ls "$ROOT"/build/wheels.new/torch-*.whl >/dev/null 2>&1 || die "pip download fetched no torch wheel"
  rm -rf "$ROOT/build/wheels"
  mv "$ROOT/build/wheels.new" "$ROOT/build/wheels"
  log "wheels: $(find "$ROOT/build/wheels" -name '*.whl' | wc -l) files, $(du -sh "$ROOT/build/wheels" | cut -f1)"
}

build_image() {
  log "docker build $IMAGE (base $BASE_IMAGE, --network none: no index, no registry)"
  if ! docker build --network none --tag "$IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    "$ROOT" >"$RUN_DIR/build.log" 2>&1; then
    tail -40 "$RUN_DIR/build.log" >&2
    die "docker build failed (log: $RUN_DIR/build.log)"
  fi
  # Earlier builds of the image, now untagged (the layer cache of the build stage stays).
  docker image prune --force --filter label=org.opencontainers.image.title=fastswitch >/dev/null || true
  log "image $IMAGE: $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

# Prometheus from Debian's package (monitoring/Dockerfile) on the same Debian base. Unlike the
# FastSwitch image this build needs the Debian archive: it runs with the host's network (the
# engine started here has no default bridge). promtool then checks the scrape config.
build_prometheus_image() {
  log "docker build $PROM_IMAGE (Debian's prometheus package, base $BASE_IMAGE)"
  if ! docker build --network host --tag "$PROM_IMAGE" --build-arg BASE_IMAGE="$BASE_IMAGE" \
    "$ROOT/monitoring" >"$RUN_DIR/build-prometheus.log" 2>&1; then
    tail -40 "$RUN_DIR/build-prometheus.log" >&2
    die "docker build of the Prometheus image failed (log: $RUN_DIR/build-prometheus.log)"
  fi
  docker image prune --force --filter label=org.opencontainers.image.title=fastswitch-prometheus \
    >/dev/null || true
  local out
  out=$(docker run --rm --network none --entrypoint promtool \
    -v "$ROOT/monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" "$PROM_IMAGE" \
    check config /etc/prometheus/prometheus.yml 2>&1) || {
    echo "$out" >&2
    die "promtool check config: monitoring/prometheus.yml is not valid"
  }
  log "$(docker run --rm --network none "$PROM_IMAGE" --version 2>&1 | head -1); config valid"
}

# ---------------------------------------------------------------- the stack
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

containers() { docker ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT"; }

# Prints "name state health restarts" for every container of the stack.
stack_state() {
  local ids
  ids=$(containers)
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086
  docker inspect --format \
    '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}}' \
    $ids | sed 's|^/||'
}

dump_logs() {
  "${COMPOSE[@]}" "${UP_PROFILES[@]}" logs --no-color --timestamps >"$RUN_DIR/stack.log" 2>&1 || true
  log "logs: $RUN_DIR/stack.log"
}

wait_healthy() {
  local want=$((WORKERS + 3 + (MONITORING == 1 ? 1 : 0))) deadline=$((SECONDS + START_TIMEOUT)) state healthy
  while :; do
    state=$(stack_state)
    healthy=$(grep -c ' running healthy ' <<<"$state" || true)
    if [ "$healthy" -eq "$want" ]; then
      log "all $want containers healthy"
      return
    fi
    if grep -qE ' (exited|dead) | unhealthy ' <<<"$state"; then
      echo "$state" >&2
      dump_logs
      tail -40 "$RUN_DIR/stack.log" >&2
      die "a container exited or is unhealthy"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$state" >&2
      dump_logs
      die "not healthy after ${START_TIMEOUT}s ($healthy of $want)"
    fi
    sleep 2
  done
}

# The published port, from the host's network (one container: with vfs each one costs a copy of
# the image): it answers health SERVING and the scheduler's stats list every worker.
check_published_port() {
  local out
  out=$(docker run --rm -i --network host --entrypoint python "$IMAGE" - \
    "127.0.0.1:$FASTSWITCH_PORT" "$WORKERS" 2>&1 <<'EOF'
import sys
from client import Client
from servekit.healthcheck import check
address, want = sys.argv[1], int(sys.argv[2])
status = check(address, timeout_s=10)
if status != "SERVING":
    sys.exit(f"{address}: health {status}")
with Client(address, timeout_s=30) as c:
    workers = [w.worker_id for w in c.stats().workers]
if len(workers) != want:
    sys.exit(f"{address}: the scheduler lists {len(workers)} workers {workers}, expected {want}")
print(f"{address}: SERVING, {len(workers)} workers joined")
EOF
  ) || die "the published port: ${out:-no answer}"
  log "published port $out"
}

# The HTTP door's published port: the model listed, a completion and a streamed chat completion
# answered in OpenAI's format, and an error in OpenAI's JSON.
check_http_door() {
  local out
  out=$(python3 - "127.0.0.1:$FASTSWITCH_HTTP_PORT" 2>&1 <<'EOF'
import json, sys, urllib.error, urllib.request
base = f"http://{sys.argv[1]}"
def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
status, text = call("/v1/models")
models = [m["id"] for m in json.loads(text)["data"]] if status == 200 else text
if models != ["tiny"]:
    sys.exit(f"/v1/models: {status} {models}")
status, text = call("/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 8, "temperature": 0})
usage = json.loads(text).get("usage", {}) if status == 200 else text
if status != 200 or usage.get("completion_tokens") != 8:
    sys.exit(f"/v1/completions: {status} {text[:300]}")
body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
        "temperature": 0, "stream": True}
status, text = call("/v1/chat/completions", body)
events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
if status != 200 or events[-1] != "[DONE]" or json.loads(events[0])["object"] != "chat.completion.chunk":
    sys.exit(f"/v1/chat/completions stream: {status} {text[:300]}")
status, text = call("/v1/completions", {"model": "tiny", "prompt": "hi", "n": 3})
if status != 400 or "error" not in json.loads(text):
    sys.exit(f"n=3 should be a 400 error: {status} {text[:300]}")
print(f"{base}: models, completion, streamed chat ({len(events)} events), a 400 error, as OpenAI's")
EOF
  ) || die "the HTTP door: ${out:-no answer}"
  log "HTTP door $out"
}

# The internal plane: the worker port is not published; on the compose network a rogue worker
# without the secret gets UNAUTHENTICATED from it, UNIMPLEMENTED from the public port, and the KV
# store refuses it too (the probe runs in the bench's image, which is given no secret).
check_internal_plane() {
  local out
  out=$("${COMPOSE[@]}" port scheduler 50052 2>/dev/null || true)
  grep -qE ':[1-9][0-9]*$' <<<"$out" && die "the worker plane is published: $out"
  out=$("${COMPOSE[@]}" "${PROFILES[@]}" run --rm -T --no-deps --entrypoint python bench - 2>&1 <<'EOF'
import asyncio, sys
import grpc
from proto import kvstore_pb2 as kv, kvstore_pb2_grpc as kv_grpc
from proto import worker_pb2 as wk, worker_pb2_grpc as wk_grpc

async def step_link(target):
    # Read first, write nothing: the refusal comes on the call's metadata, before any message
    # (a write racing the server's end of the call reads as INTERNAL in grpc-python).
    async with grpc.aio.insecure_channel(target) as ch:
        call = wk_grpc.StepLinkStub(ch).Connect(timeout=10)
        try:
            msg = await call.read()
        except grpc.aio.AioRpcError as err:
            return err.code().name
        if msg is grpc.aio.EOF:
            return (await call.code()).name
        return f"received {msg}"

async def store(target):
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            await kv_grpc.KVStoreStub(ch).GetStats(kv.StoreStatsRequest(), timeout=10)
            return "answered"
        except grpc.aio.AioRpcError as err:
            return err.code().name

async def main():
    got = (await step_link("scheduler:50052"), await step_link("scheduler:50051"),
           await store("kvstore:50061"))
    if got != ("UNAUTHENTICATED", "UNIMPLEMENTED", "UNAUTHENTICATED"):
        sys.exit(f"worker plane, public port, KV store without the secret: {got}")
    print("a caller without the secret: worker plane UNAUTHENTICATED, public port UNIMPLEMENTED, "
          "KV store UNAUTHENTICATED")
asyncio.run(main())
EOF
  ) || die "the internal plane: ${out:-no answer}"
  log "internal plane unpublished; $(tail -1 <<<"$out")"
}

run_bench() {
  log "fastswitch-bench: fairness workload, $REQUESTS requests"
  if ! "${COMPOSE[@]}" "${PROFILES[@]}" run --rm bench \
    --target=scheduler:50051 --wait-workers="$WORKERS" --wait-timeout=60 --workload=fairness --duration=10 --rate=12 \
    --max-requests="$REQUESTS" --request-timeout=120 --json=/out/result.json --no-progress \
    >"$RUN_DIR/bench.txt" 2>&1; then
    cat "$RUN_DIR/bench.txt" >&2
    dump_logs
    die "fastswitch-bench failed"
  fi
  sed 's/^/  | /' "$RUN_DIR/bench.txt" >&2
}

# The report: every planned request issued and finished, none failed or cancelled, tokens came
# back, the scheduler saw no failure either, and (unless told otherwise) requests were swapped out
# and back in, so KV went through the host arena the containers share.
check_report() {
  python3 - "$RUN_DIR/out/result.json" "$REQUESTS" "$REQUIRE_SWAPS" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
want, require_swaps = int(sys.argv[2]), sys.argv[3] == "1"
s, run = doc["summary"], doc["run"]
planned = doc["workload"]["planned_requests"]
problems = []
if run.get("stopped"):
    problems.append(f"the run stopped early: {run['stopped']}")
if not 0 < planned <= want:
    problems.append(f"planned {planned} requests, expected 1..{want}")
if s["issued"] != planned or s["finished"] != s["issued"]:
    problems.append(f"issued {s['issued']}, finished {s['finished']} of {planned} planned")
if s["failed"] or s["cancelled"] or s["errors"]:
    problems.append(f"failed {s['failed']}, cancelled {s['cancelled']}, errors {s['errors']} "
                    f"{s.get('error_examples')}")
if not s["output_tokens"] > 0:
    problems.append("no output tokens")
bad = [r for r in doc["requests"] if r["error"] or not r["output_tokens"]]
if bad:
    problems.append(f"{len(bad)} requests with an error or no output, e.g. {bad[0]}")
srv = s.get("server")
if srv is None:
    problems.append("no scheduler stats in the report")
elif srv["failed"] or srv["cancelled"]:
    problems.append(f"scheduler counted failed {srv['failed']}, cancelled {srv['cancelled']}")
elif require_swaps and not (srv["swap_outs"] and srv["swap_ins"] and srv["swap_in_bytes"]):
    problems.append("no swap-out and swap-in through the host arena (FASTSWITCH_SMOKE_REQUIRE_SWAPS=0 "
                    "allows that)")
ms = lambda v: "-" if v is None else f"{v * 1e3:.0f}"
print(f"requests {s['finished']}/{planned} finished, 0 failed; output tokens {s['output_tokens']}; "
      f"{s['output_tokens_per_s']:.1f} tok/s; TTFT p50/p99 {ms(s['ttft']['p50'])}/"
      f"{ms(s['ttft']['p99'])} ms; TBT p50/p99 {ms(s['tbt']['p50'])}/{ms(s['tbt']['p99'])} ms")
if srv is not None:
    mib = lambda n: f"{n / 2**20:.1f} MiB"
    print(f"server: {srv['policy']}/{srv['mode']}, preemptions {srv['preemptions']}, swap-outs "
          f"{srv['swap_outs']} ({mib(srv['swap_out_bytes'])}), swap-ins {srv['swap_ins']} "
          f"({mib(srv['swap_in_bytes'])}), recomputes {srv['recomputes']}, "
          f"workers {len(srv['workers'])}")
if problems:
    print("report check FAILED:\n  " + "\n  ".join(problems))
    sys.exit(1)
EOF
}

# One size setting: the KV store sized its arena from its /dev/shm (FASTSWITCH_SHM_SIZE) less
# the reserve, as its "serving" log line says.
check_arena_size() {
  local logs line got
  # the whole log first: grep -m1 in a pipe would end `compose logs` early (SIGPIPE), and
  # under pipefail that reads as no line at all once the log outgrows the pipe's buffer
  logs=$("${COMPOSE[@]}" logs --no-color kvstore 2>&1)
  line=$(grep -m1 '"msg":"serving"' <<<"$logs") || die "the KV store logged no serving line"
  got=$(sed -nE 's/.*"arena_bytes":([0-9]+).*/\1/p' <<<"$line")
  [ "$got" = "$WANT_ARENA_BYTES" ] ||
    die "arena of ${got:-?} bytes, expected $WANT_ARENA_BYTES (shm $FASTSWITCH_SHM_SIZE less the reserve)"
  log "arena $got bytes: shm_size $FASTSWITCH_SHM_SIZE less the $FASTSWITCH_SHM_RESERVE_GIB GiB reserve"
}

# Prometheus (/api/v1/targets on its published port): every job of monitoring/prometheus.yml has
# its targets, all up: itself, the scheduler, the KV store and every worker replica.
check_targets() {
  local out
  if ! out=$(python3 - "127.0.0.1:$FASTSWITCH_PROMETHEUS_PORT" "$WORKERS" "$TARGETS_TIMEOUT" 2>&1 <<'EOF'
import json, sys, time, urllib.request
address, workers, timeout_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
want = {"prometheus": 1, "scheduler": 1, "kvstore": 1, "api": 1, "worker": workers}
deadline, state = time.monotonic() + timeout_s, "no answer"
while True:
    try:
        url = f"http://{address}/api/v1/targets?state=active"
        with urllib.request.urlopen(url, timeout=5) as r:
            targets = json.load(r)["data"]["activeTargets"]
        jobs = {}
        for t in targets:
            jobs.setdefault(t["labels"]["job"], []).append(t)
        up = {j: sum(t["health"] == "up" for t in ts) for j, ts in jobs.items()}
        state = ", ".join(
            f"{j} {up[j]}/{len(ts)} up"
            + "".join(f" ({t['scrapeUrl']}: {t['lastError']})" for t in ts if t["lastError"])
            for j, ts in sorted(jobs.items())
        )
        if set(jobs) == set(want) and all(len(jobs[j]) == n == up[j] for j, n in want.items()):
            print(f"every target up: {state}")
            sys.exit(0)
    except OSError as err:
        state = f"no answer: {err}"
    if time.monotonic() > deadline:
        sys.exit(f"after {timeout_s:g}s: {state}; expected {want}, all up")
    time.sleep(2)
EOF
  ); then
    dump_logs
    die "Prometheus targets: $out"
  fi
  log "Prometheus: $out"
}

check_logs() {
  dump_logs
  if grep -nE '"level":"(error|critical)"|Traceback \(most recent call last\)' "$RUN_DIR/stack.log" >&2; then
    die "errors in the services' logs"
  fi
  log "no error in the services' logs"
}

# SIGTERM to every service (compose stop): each must exit 0 within the grace period, its ordered
# shutdown done (a kill after the grace period shows as 137).
check_clean_stop() {
  "${COMPOSE[@]}" "${UP_PROFILES[@]}" stop --timeout 30 >/dev/null 2>&1 || die "compose stop failed"
  local codes
  # shellcheck disable=SC2046
  codes=$(docker inspect --format '{{.Name}} {{.State.ExitCode}}' $(containers) | sed 's|^/||')
  if grep -vqE ' 0$' <<<"$codes"; then
    echo "$codes" >&2
    dump_logs
    die "a service did not exit 0 on SIGTERM"
  fi
  log "every service exited 0 on SIGTERM"
}

# ---------------------------------------------------------------- main
ensure_engine
ensure_compose
phase_done engine
ensure_base_image
phase_done base-image
download_wheels
phase_done wheels
build_image
phase_done build
if [ "$MONITORING" = 1 ]; then
  build_prometheus_image
  phase_done build-prometheus
fi

FASTSWITCH_PORT=$(free_port)
FASTSWITCH_HTTP_PORT=$(free_port)
mkdir -p "$RUN_DIR/out"
export FASTSWITCH_IMAGE=$IMAGE FASTSWITCH_BASE_IMAGE=$BASE_IMAGE FASTSWITCH_PORT FASTSWITCH_HTTP_PORT
export FASTSWITCH_WORKERS=$WORKERS FASTSWITCH_RESTART=no FASTSWITCH_DEPLOYMENT_ID=smoke
export FASTSWITCH_BENCH_OUT=$RUN_DIR/out FASTSWITCH_HEALTH_INTERVAL=2s
# The stack requires a deployment secret (docs/compose.md): a fresh one for every run.
FASTSWITCH_DEPLOYMENT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export FASTSWITCH_DEPLOYMENT_SECRET
FASTSWITCH_PROMETHEUS_PORT=$(free_port)
export FASTSWITCH_PROMETHEUS_IMAGE=$PROM_IMAGE FASTSWITCH_PROMETHEUS_PORT
# Small enough that context switches happen: 24 device blocks per worker. One size setting: the
# arena is the KV store's shm size (1 GiB) less the reserve for the CPU pools (0.5 GiB).
export FASTSWITCH_DEVICE_KV_BLOCKS=${FASTSWITCH_DEVICE_KV_BLOCKS:-24}
export FASTSWITCH_SHM_SIZE=1gb FASTSWITCH_SHM_RESERVE_GIB=0.5
unset FASTSWITCH_HOST_KV_GIB
WANT_ARENA_BYTES=$(((1 << 30) - (1 << 29)))

"${COMPOSE[@]}" "${PROFILES[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1 || true
log "compose up ${UP_PROFILES[*]}: $WORKERS workers (scheduler on 127.0.0.1:$FASTSWITCH_PORT)"
STACK_UP=1
"${COMPOSE[@]}" "${UP_PROFILES[@]}" up --detach --no-build >"$RUN_DIR/up.log" 2>&1 || {
  cat "$RUN_DIR/up.log" >&2
  dump_logs
  tail -20 "$RUN_DIR/stack.log" >&2
  die "compose up failed"
}
wait_healthy
phase_done stack-up
check_arena_size
check_published_port
check_internal_plane
check_http_door
phase_done http-door
if [ "$MONITORING" = 1 ]; then
  check_targets
  phase_done targets
fi
run_bench
phase_done bench
check_report >"$RUN_DIR/report.txt" || {
  cat "$RUN_DIR/report.txt" >&2
  die "the bench report does not pass"
}
sed 's/^/  /' "$RUN_DIR/report.txt" >&2
check_logs
[ "$KEEP" = 1 ] && {
  log "PASS (stack left running: ${COMPOSE[*]} down)"
  exit 0
}
check_clean_stop
"${COMPOSE[@]}" "${PROFILES[@]}" down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1
STACK_UP=0
phase_done checks-and-down
log "PASS in $((SECONDS - T0))s (${TIMINGS[*]}); logs and report in $RUN_DIR"
