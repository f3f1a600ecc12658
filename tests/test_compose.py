"""The compose stack's files, checked without a Docker engine (scripts/compose-smoke.sh runs it):
the compose files against the compose specification, their wiring (IPC, health, start order,
profiles, GPU workers from one service, the arena sized from the shm size, the bench without a
worker dependency, the model override, Prometheus scraping every service), every environment
variable handed to a service against that service's flags, and the health probe of the image
(servekit.healthcheck) against a real gRPC health server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from servekit import healthcheck

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("worker", "worker-gpu")
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))
_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<default>[^}]*))?\}")
#: Values of the variables the stack requires (``${VAR:?message}``), as an operator sets them.
REQUIRED = {
    "FASTSWITCH_DEPLOYMENT_SECRET": "compose-test-secret-0123456789abcdef",
    "FASTSWITCH_API_KEYS_DIR": "/srv/keys",
}
#: Variables read from the environment only, never a flag (secrets: servekit/planes.py; the
#: scheduler's key file: servekit/keys.py).
ENV_ONLY = {"FASTSWITCH_DEPLOYMENT_SECRET", "FASTSWITCH_API_KEYS_FILE"}
INTERNAL = ("kvstore", "scheduler", "worker", "worker-gpu")  # the internal plane's services


def _check_jsonschema() -> str | None:
    beside = Path(sys.executable).parent / "check-jsonschema"
    return str(beside) if beside.exists() else shutil.which("check-jsonschema")


def _defaults(value: Any) -> Any:
    """``value`` with every ``${VAR:-default}`` replaced by its default (what compose does when
    the variable is unset) and every required ``${VAR:?message}`` by its REQUIRED value;
    ``$$`` -> ``$``."""
    if isinstance(value, str):
        return _VAR.sub(_value, value).replace("$$", "$")
    if isinstance(value, dict):
        return {k: _defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_defaults(v) for v in value]
    return value


def _value(m: re.Match[str]) -> str:
    if m["op"] == ":?":
        return REQUIRED[m["name"]]
    return m["default"] or ""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with open(ROOT / "docker-compose.yml") as f:
        return _defaults(yaml.safe_load(f))


# ---------------------------------------------------------------- the specification


def test_compose_files_exist():
    assert ROOT / "docker-compose.yml" in COMPOSE_FILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_follows_the_compose_specification(path: Path):
    exe = _check_jsonschema()
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_can_fail(tmp_path: Path):
    exe = _check_jsonschema()
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install check-jsonschema)")
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  kvstore:\n    image: x\n    shm_sise: 1gb\n")
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0


# ---------------------------------------------------------------- wiring


def test_services_and_profiles(compose):
    services = compose["services"]
    assert {"kvstore", "scheduler", "worker"} <= services.keys()
    for name in ("kvstore", "scheduler", "worker"):
        assert "profiles" not in services[name], f"{name} must start by default"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert services["bench"]["profiles"] == ["bench"]
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_workers_share_the_kvstore_ipc_namespace(compose):
    services = compose["services"]
    kv = services["kvstore"]
    assert kv["ipc"] == "shareable"
    assert _bytes(kv["shm_size"]) >= 1 << 30
    for name in ("worker", "worker-gpu"):
        assert services[name]["ipc"] == "service:kvstore"
        assert (
            services[name]["environment"]["FASTSWITCH_DEPLOYMENT_ID"]
            == kv["environment"]["FASTSWITCH_DEPLOYMENT_ID"]
        )
        assert "FASTSWITCH_WORKER_ID" not in services[name]["environment"], (
            "replicas need distinct worker ids: leave the default (hostname-pid)"
        )


def test_health_checks_and_start_order(compose):
    services = compose["services"]
    for name in ("kvstore", "scheduler", "worker", "worker-gpu"):
        check = services[name]["healthcheck"]
        assert check["test"] == ["CMD", "python", "-m", "servekit.healthcheck"]
        assert services[name]["environment"]["FASTSWITCH_LISTEN"].startswith("0.0.0.0:")
    healthy = {"condition": "service_healthy"}
    assert services["scheduler"]["depends_on"] == {"kvstore": healthy}
    for name in ("worker", "worker-gpu"):
        assert services[name]["depends_on"] == {"kvstore": healthy, "scheduler": healthy}
    assert services["bench"]["depends_on"] == {"scheduler": healthy}
    assert services["prometheus"]["healthcheck"]["test"][:3] == ["CMD", "promtool", "query"]


def test_the_bench_starts_with_any_worker_count(compose):
    """No worker service (it may have zero replicas) is a dependency of the bench: it waits
    itself until the scheduler lists --wait-workers workers."""
    bench = compose["services"]["bench"]
    assert not set(bench["depends_on"]) & set(WORKERS)
    from client.loadgen.cli import build_run_parser

    args = build_run_parser().parse_args(bench["command"])  # what the bench container runs
    assert args.wait_workers >= 1 and args.wait_timeout > 0
    assert args.target == "scheduler:50051"


def test_addresses_match_listeners(compose):
    services = compose["services"]
    kv_port = services["kvstore"]["environment"]["FASTSWITCH_LISTEN"].rsplit(":", 1)[1]
    sched = services["scheduler"]["environment"]
    sched_port = sched["FASTSWITCH_LISTEN"].rsplit(":", 1)[1]
    internal_port = sched["FASTSWITCH_INTERNAL_LISTEN"].rsplit(":", 1)[1]
    assert internal_port != sched_port
    assert sched["FASTSWITCH_KVSTORE"] == f"kvstore:{kv_port}"
    for name in ("worker", "worker-gpu"):
        env = services[name]["environment"]
        assert env["FASTSWITCH_KVSTORE"] == f"kvstore:{kv_port}"
        # Workers dial the worker plane, never the public port.
        assert env["FASTSWITCH_SCHEDULER"] == f"scheduler:{internal_port}"
    assert services["scheduler"]["ports"] == [f"127.0.0.1:50051:{sched_port}"]
    assert f"--target=scheduler:{sched_port}" in services["bench"]["command"]
    assert services["api"]["environment"]["FASTSWITCH_SCHEDULER"] == f"scheduler:{sched_port}"


def test_the_internal_plane_is_unpublished_and_needs_the_secret(compose):
    """Only public ports are published; the KV store, the scheduler and the workers share the
    one required secret; the HTTP door and the bench (public port only) never see it."""
    with open(ROOT / "docker-compose.yml") as f:
        raw = yaml.safe_load(f)["services"]
    services = compose["services"]
    for name in INTERNAL:
        assert raw[name]["environment"]["FASTSWITCH_DEPLOYMENT_SECRET"].startswith(
            "${FASTSWITCH_DEPLOYMENT_SECRET:?"
        ), f"{name}: the secret is required, with no default"
        env = services[name]["environment"]
        internal = env["FASTSWITCH_INTERNAL_LISTEN" if name == "scheduler" else "FASTSWITCH_LISTEN"]
        published = {p.rsplit(":", 1)[1] for p in services[name].get("ports", [])}
        assert internal.rsplit(":", 1)[1] not in published, f"{name} publishes {internal}"
    for name in ("api", "bench", "prometheus"):
        assert "FASTSWITCH_DEPLOYMENT_SECRET" not in (services[name].get("environment") or {})


def test_worker_replicas_and_gpu_reservation(compose):
    services = compose["services"]
    assert int(services["worker"]["deploy"]["replicas"]) >= 1
    assert services["worker"]["environment"]["FASTSWITCH_DEVICE"] == "cpu"
    gpu = services["worker-gpu"]
    # N GPU workers from one definition: every replica gets every GPU and claims one itself.
    assert int(gpu["deploy"]["replicas"]) >= 1
    assert gpu["environment"]["FASTSWITCH_DEVICE"] == "cuda:auto"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == "all" and "device_ids" not in device
    assert gpu["image"] != services["worker"]["image"], "the GPU worker needs the CUDA build"


def test_the_arena_is_sized_from_the_shm_size(compose):
    """One setting (shm_size) sizes both: the arena is it less the reserve, and the default CPU
    workers' pools (tiny model, 1024 blocks of 64 KiB) fit in that reserve."""
    from kvstore_svc import config
    from worker_svc.device_pool import CPU_DEFAULT_BLOCKS

    kv = compose["services"]["kvstore"]
    assert kv["environment"]["FASTSWITCH_HOST_KV_GIB"] == "auto"
    shm_bytes = _bytes(kv["shm_size"])
    cfg = config.from_args([], {"FASTSWITCH_HOST_KV_GIB": "auto"}, shm_bytes=lambda: shm_bytes)
    reserve = int(cfg.shm_reserve_gib * (1 << 30))
    assert cfg.arena_bytes == shm_bytes - reserve
    pools = int(compose["services"]["worker"]["deploy"]["replicas"]) * CPU_DEFAULT_BLOCKS << 16
    assert pools <= reserve


# ---------------------------------------------------------------- the model override


def test_the_model_override_mounts_one_directory_into_every_model_service(compose):
    with open(ROOT / "docker-compose.model.yml") as f:
        override = yaml.safe_load(f)["services"]
    using_the_model = {
        name
        for name, svc in compose["services"].items()
        if "FASTSWITCH_MODEL" in svc.get("environment", {})
    }
    assert using_the_model == {"scheduler", "api", *WORKERS}
    assert set(override) == using_the_model
    for name, svc in override.items():
        (volume,) = svc["volumes"]
        assert volume["type"] == "bind" and volume["read_only"] is True
        assert volume["source"].startswith("${FASTSWITCH_MODEL_DIR:?"), "required, no default"
        assert svc["environment"] == {"FASTSWITCH_MODEL": volume["target"]}, name


# ---------------------------------------------------------------- the keys override


def test_without_the_keys_override_the_stack_is_open(compose):
    assert compose["services"]["scheduler"]["environment"]["FASTSWITCH_API_KEYS_FILE"] is None
    api = compose["services"]["api"]["environment"]
    assert api["FASTSWITCH_API_KEYS"] is None and api["FASTSWITCH_SCHEDULER_API_KEY_FILE"] is None


def test_the_keys_override_mounts_the_key_files_into_the_scheduler_and_the_door(
    compose, tmp_path, monkeypatch
):
    with open(ROOT / "docker-compose.keys.yml") as f:
        raw = yaml.safe_load(f)["services"]
    assert set(raw) == {"scheduler", "api"}, "the workers, store and bench never see keys"
    for svc in raw.values():
        (volume,) = svc["volumes"]
        assert volume["type"] == "bind" and volume["read_only"] is True
        assert volume["source"].startswith("${FASTSWITCH_API_KEYS_DIR:?"), "required, no default"
        for path in svc["environment"].values():
            assert path.startswith(volume["target"] + "/"), path
    # Every variable of the override is one the base file passes (so it is not a typo) ...
    for name, svc in raw.items():
        assert set(svc["environment"]) <= compose["services"][name]["environment"].keys()
    # ... and with the files an operator makes, the scheduler and the door load them.
    target = raw["scheduler"]["volumes"][0]["target"]
    (tmp_path / "keys.txt").write_text("sk-alice-0000 alice\nsk-door-00000000 door role=service\n")
    (tmp_path / "door.key").write_text("sk-door-00000000\n")

    def here(path: str) -> str:
        return str(tmp_path / path.removeprefix(target + "/"))

    from servekit.keys import KeyRing, read_key_file

    sched = KeyRing.load(environ={k: here(v) for k, v in raw["scheduler"]["environment"].items()})
    assert sched.enabled and sched.tenants() == {"alice", "door"}
    door_key = read_key_file(here(raw["api"]["environment"]["FASTSWITCH_SCHEDULER_API_KEY_FILE"]))
    assert door_key == "sk-door-00000000"
    for key in list(os.environ):
        if key.startswith("FASTSWITCH_"):
            monkeypatch.delenv(key)
    for key, value in raw["api"]["environment"].items():
        monkeypatch.setenv(key, here(value))
    from api_svc.server import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args([]))
    assert cfg.api_keys == str(tmp_path / "keys.txt")
    assert cfg.scheduler_api_key_file == str(tmp_path / "door.key")


# ---------------------------------------------------------------- monitoring


def _scrape_targets() -> dict[str, set[str]]:
    """job -> the ``host:port`` targets of monitoring/prometheus.yml (DNS names with their port)."""
    with open(ROOT / "monitoring" / "prometheus.yml") as f:
        doc = yaml.safe_load(f)
    jobs: dict[str, set[str]] = {}
    for job in doc["scrape_configs"]:
        targets = jobs.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "compose's DNS answers A records, one per replica"
            targets.update(f"{name}:{sd['port']}" for name in sd["names"])
    return jobs


def _dns_names(services: dict[str, Any]) -> dict[str, set[str]]:
    """DNS name on the project's network -> the services it resolves to (names and aliases)."""
    names: dict[str, set[str]] = {}
    for name, svc in services.items():
        names.setdefault(name, set()).add(name)
        for net in (svc.get("networks") or {}).values():
            for alias in (net or {}).get("aliases", []):
                names.setdefault(alias, set()).add(name)
    return names


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose):
    services = compose["services"]
    dns = _dns_names(services)
    scraped = set()
    for targets in _scrape_targets().values():
        for target in targets:
            host, port = target.rsplit(":", 1)
            scraped |= {f"{name}:{port}" for name in dns.get(host, {host})}
    want = {
        f"{name}:{svc['environment']['FASTSWITCH_METRICS_PORT']}"
        for name, svc in services.items()
        if "FASTSWITCH_METRICS_PORT" in svc.get("environment", {})
    }
    assert want == {"kvstore:9461", "scheduler:9451", "worker:9471", "worker-gpu:9471"}
    if "api" in services:  # the HTTP front door: /metrics on port 8000
        want.add("api:8000")
    assert want <= scraped, f"not scraped: {sorted(want - scraped)}"
    for target in scraped - want:  # what else is scraped is Prometheus itself
        assert target == "localhost:9090", target
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    jobs = _scrape_targets()
    assert jobs["worker"] == {"workers:9471"}
    assert dns["workers"] == set(WORKERS), "one DNS name for every worker replica"
    assert {"scheduler", "kvstore", "prometheus"} <= jobs.keys()


def test_prometheus_runs_the_config_of_the_repository(compose):
    prom = compose["services"]["prometheus"]
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert prom["build"]["context"] == "monitoring"
    dockerfile = (ROOT / "monitoring" / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\bprometheus\b", dockerfile), "Debian's package"
    assert "--config.file=/etc/prometheus/prometheus.yml" in dockerfile


# ---------------------------------------------------------------- environment -> flags


def _parser(service: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    if service == "kvstore":
        from kvstore_svc import config

        return config.parser(env)
    if service == "scheduler":
        from scheduler_svc.server import build_parser

        return build_parser()
    from worker_svc.server import build_parser as worker_parser

    return worker_parser()


@pytest.mark.parametrize("name", ["kvstore", "scheduler", "worker", "worker-gpu"])
def test_every_variable_names_a_flag(compose, name):
    service = compose["services"][name]["command"][1]
    flags = _parser(service, {})._option_string_actions
    for var in compose["services"][name]["environment"]:
        assert var.startswith("FASTSWITCH_"), var
        if var in ENV_ONLY:
            continue
        flag = "--" + var.removeprefix("FASTSWITCH_").lower().replace("_", "-")
        assert flag in flags, f"{name}: {var} matches no flag of `fastswitch serve {service}`"


@pytest.mark.parametrize("name", ["kvstore", "scheduler", "worker"])
def test_default_environment_makes_a_valid_config(compose, name, monkeypatch):
    """The services read FASTSWITCH_<FLAG>: the compose defaults must build a valid config."""
    env = {k: str(v) for k, v in compose["services"][name]["environment"].items() if v is not None}
    for key in list(os.environ):
        if key.startswith("FASTSWITCH_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if name == "kvstore":
        from kvstore_svc import config

        shm_bytes = _bytes(compose["services"]["kvstore"]["shm_size"])
        cfg = config.from_args([], env, shm_bytes=lambda: shm_bytes)
        assert cfg.listen == env["FASTSWITCH_LISTEN"]
        assert cfg.plane.secret == REQUIRED["FASTSWITCH_DEPLOYMENT_SECRET"]
        assert cfg.deployment_id == env["FASTSWITCH_DEPLOYMENT_ID"]
    elif name == "scheduler":
        from scheduler_svc.server import build_parser, config_from_args

        cfg = config_from_args(build_parser().parse_args([]))
        assert cfg.kvstore == env["FASTSWITCH_KVSTORE"]
        assert cfg.core.preemption == "swap"
        assert cfg.internal_listen == env["FASTSWITCH_INTERNAL_LISTEN"]
        assert cfg.plane.secret == REQUIRED["FASTSWITCH_DEPLOYMENT_SECRET"]
    else:
        from worker_svc.server import build_parser, config_from_args

        cfg = config_from_args(build_parser().parse_args([]))
        assert cfg.scheduler == env["FASTSWITCH_SCHEDULER"]
        assert cfg.plane.secret == REQUIRED["FASTSWITCH_DEPLOYMENT_SECRET"]
        assert cfg.deployment_id == env["FASTSWITCH_DEPLOYMENT_ID"]


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(size).lower())
    assert m, size
    return int(float(m[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2]])


# ---------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", ["compose-smoke.sh", "check-compose.sh"])
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()


# ---------------------------------------------------------------- the health probe


@pytest.mark.parametrize(
    ("listen", "probe"),
    [
        ("0.0.0.0:50061", "127.0.0.1:50061"),
        ("[::]:50061", "[::1]:50061"),
        ("127.0.0.1:7", "127.0.0.1:7"),
        ("kvstore:50061", "kvstore:50061"),
        ("unix:///tmp/x.sock", "unix:///tmp/x.sock"),
    ],
)
def test_probe_address(listen, probe):
    assert healthcheck.probe_address(listen) == probe


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_healthcheck_exit_status_follows_serving(health_server, capsys):
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([address], environ={}) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address], environ={}) == 0
    port = address.rsplit(":", 1)[1]
    assert healthcheck.main([], environ={"FASTSWITCH_LISTEN": f"0.0.0.0:{port}"}) == 0
    assert healthcheck.main([address, "--service", "fastswitch.v1.FastSwitch"], environ={}) == 1


def test_healthcheck_fails_without_a_server(capsys):
    port = _closed_port()
    assert healthcheck.main([f"127.0.0.1:{port}", "--timeout", "0.5"], environ={}) == 1
    assert re.search(r"UNAVAILABLE|DEADLINE_EXCEEDED", capsys.readouterr().err)
    assert healthcheck.main([], environ={}) == 1
    assert "FASTSWITCH_LISTEN is not set" in capsys.readouterr().err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthcheck_runs_as_a_module(health_server):
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    out = subprocess.run(
        [sys.executable, "-m", "servekit.healthcheck", address],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr.decode()
