"""The deploy package without the real services: flag mapping, ports, and the start/stop life
cycle of a Deployment whose children are small dummy gRPC servers (health, and GetStats on the
scheduler)."""

from __future__ import annotations

import asyncio
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from polling import eventually_sync

from fastswitch.deploy import (
    Deployment,
    DeploymentConfig,
    DeploymentError,
    Layout,
    StartRefused,
    child_specs,
    free_port,
    free_ports,
    port_is_free,
    serve_command,
)
from fastswitch.deploy.placement import worker_devices
from servekit.service import wait_healthy

DUMMY = textwrap.dedent(
    """
    import asyncio, signal, sys
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from proto import scheduler_pb2 as pb, scheduler_pb2_grpc as pb_grpc

    service, behaviour, order_file, *flags = sys.argv[1:]
    listen = flags[flags.index("--listen") + 1]
    joined = int(flags[flags.index("--fake-workers") + 1]) if "--fake-workers" in flags else 0

    class Stats(pb_grpc.FastSwitchServicer):
        async def GetStats(self, request, context):
            ws = [pb.WorkerStats(worker_id=f"worker-{i}") for i in range(joined)]
            return pb.StatsResponse(workers=ws)

    async def main():
        if behaviour == "crash":
            print(f"boom: {service} cannot start", file=sys.stderr, flush=True)
            sys.exit(3)
        server = grpc.aio.server()
        hs = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        if service == "scheduler":
            pb_grpc.add_FastSwitchServicer_to_server(Stats(), server)
        server.add_insecure_port(listen)
        await server.start()
        ok = behaviour != "unhealthy"
        S = health_pb2.HealthCheckResponse
        await hs.set("", S.SERVING if ok else S.NOT_SERVING)
        stop = asyncio.Event()
        def on_term():
            with open(order_file, "a") as f:
                f.write(service + "\\n")
            if behaviour != "stubborn":
                stop.set()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())
    """
)


def _dummies(tmp_path: Path, behaviour: dict[str, str]) -> tuple[Callable, list, Path]:
    """A command builder launching the dummy; `behaviour` by child name (default "ok")."""
    script = tmp_path / "dummy_service.py"
    script.write_text(DUMMY)
    order = tmp_path / "stop-order.txt"
    calls: list[tuple[str, tuple[str, ...]]] = []

    def build(service: str, flags: Sequence[str]) -> list[str]:
        name = flags[flags.index("--worker-id") + 1] if service == "worker" else service
        calls.append((service, tuple(flags)))
        how = behaviour.get(name, "ok")
        return [sys.executable, str(script), service, how, str(order), *flags]

    return build, calls, order


def _assert_clean(d: Deployment, run_dir: Path | None) -> None:
    assert d.alive_pids() == []
    assert all(c.proc.returncode is not None for c in d.children.values())
    if run_dir is not None:
        assert not run_dir.exists()


# ---------------------------------------------------------------------- flags and ports


def test_flag_mapping():
    cfg = DeploymentConfig(
        model="/models/x",
        workers=2,
        port=6000,
        host_kv_gib=0.5,
        device_kv_blocks=64,
        policy="priority",
        mode="vllm-baseline",
        log_level="debug",
        extra_scheduler_args=("--max-num-seqs", "4"),
        extra_worker_args=("--threads", "1"),
    )
    ports = {"kvstore": 1, "scheduler": 2, "worker-0": 3, "worker-1": 4}
    layout = Layout(Path("/tmp/fs-x"), "dep1", 6000, ports)
    kv, sched, w0, w1 = child_specs(cfg, layout)
    kv_addr = "unix:///tmp/fs-x/kvstore.sock"
    internal = "unix:///tmp/fs-x/scheduler-internal.sock"  # the worker plane, not the public port
    common = ["--deployment-id", "dep1", "--log-level", "debug"]
    assert (kv.name, kv.service, kv.health_target) == ("kvstore", "kvstore", kv_addr)
    assert list(kv.flags) == [
        *("--listen", kv_addr, "--metrics-port", "1", "--host-kv-gib", "0.5"),
        *common,
    ]
    assert sched.health_target == "127.0.0.1:6000"
    assert list(sched.flags) == [
        *("--listen", "127.0.0.1:6000", "--internal-listen", internal, "--metrics-port", "2"),
        *("--kvstore", kv_addr),
        *("--model", "/models/x", "--policy", "priority", "--mode", "vllm-baseline"),
        *common,
        *("--max-num-seqs", "4"),
    ]
    assert (w1.name, w1.service, w1.health_target) == (
        "worker-1",
        "worker",
        "unix:///tmp/fs-x/worker-1.sock",
    )
    assert list(w0.flags) == [
        *("--listen", "unix:///tmp/fs-x/worker-0.sock", "--metrics-port", "3"),
        *("--scheduler", internal, "--kvstore", kv_addr, "--model", "/models/x"),
        *("--worker-id", "worker-0", "--mode", "vllm-baseline", "--device-kv-blocks", "64"),
        *common,
        *("--threads", "1"),
    ]
    no_blocks = child_specs(DeploymentConfig(), Layout(Path("/r"), "d", 1, {**ports}))
    assert "--device-kv-blocks" not in no_blocks[2].flags


def test_vllm_v1_has_a_store_too_and_its_services_read_the_mode():
    """One layout for every mode: the store is started, and the scheduler and the workers take
    the mode's settings from --mode themselves (no per-setting flag is added)."""
    ports = {"kvstore": 1, "scheduler": 2, "worker-0": 3}
    specs = child_specs(DeploymentConfig(mode="vllm-v1"), Layout(Path("/r"), "d", 1, ports))
    assert [s.service for s in specs] == ["kvstore", "scheduler", "worker"]
    for spec in specs[1:]:
        flags = list(spec.flags)
        assert flags[flags.index("--mode") + 1] == "vllm-v1"
        assert "--preemption" not in flags and "--device-prefix-cache" not in flags
    with_swaps = child_specs(
        DeploymentConfig(mode="vllm-v1", preemption="swap"), Layout(Path("/r"), "d", 1, ports)
    )
    assert "--preemption" in with_swaps[1].flags


def test_keys_go_to_the_scheduler_with_the_launcher_s_and_the_door_gets_a_service_key(tmp_path):
    from fastswitch.deploy.keys import LauncherKeys
    from servekit.keys import KeyRing, read_key_file

    users = tmp_path / "users.keys"
    users.write_text("sk-alice-0001 alice\n")
    cfg = DeploymentConfig(api_keys=users, http_port=8000, workers=1)
    ports = {"kvstore": 1, "scheduler": 2, "worker-0": 3}
    layout = Layout(tmp_path, "dep1", 6000, ports, http_port=8000)
    _, sched, api, _ = child_specs(cfg, layout)
    mine = str(tmp_path / "scheduler.keys")
    assert "--api-keys" in sched.flags and sched.flags[sched.flags.index(mine) - 1] == "--api-keys"
    assert sched.flags.count("--api-keys") == 2 and str(users) in sched.flags
    at = api.flags.index("--scheduler-api-key-file")
    assert api.flags[at + 1] == str(tmp_path / "door.key")
    assert api.flags[api.flags.index("--api-keys") + 1] == str(users)
    keys = LauncherKeys.make()
    keys.write(tmp_path)
    for name in ("scheduler.keys", "door.key", "admin.key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    ring = KeyRing.load([users, mine], environ={})
    door = ring.identity_for(f"Bearer {read_key_file(tmp_path / 'door.key')}")
    admin = ring.identity_for(f"Bearer {read_key_file(tmp_path / 'admin.key')}")
    assert door is not None and door.role == "service"
    assert (
        admin is not None
        and admin.role == "admin"
        and keys.admin_key != LauncherKeys.make().admin_key
    )
    open_specs = child_specs(DeploymentConfig(http_port=8000), layout)
    key_flags = {"--api-keys", "--scheduler-api-key-file"}
    assert all(key_flags.isdisjoint(spec.flags) for spec in open_specs)


def test_serve_command():
    assert serve_command("worker", ["--a", "b"]) == [
        sys.executable,
        *("-m", "fastswitch", "serve", "worker", "--a", "b"),
    ]


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in [*ports, free_port()]:
        assert port_is_free(port)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"port": 70000},
        {"host_kv_gib": 0},
        {"device_kv_blocks": 0},
        {"policy": "lottery"},
        {"mode": "turbo"},
        {"preemption": "drop"},
        {"log_level": "loud"},
        {"start_timeout_s": 0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        Deployment(**kwargs)


def test_unstarted_deployment():
    d = Deployment()
    with pytest.raises(RuntimeError, match="not been started"):
        _ = d.address
    d.stop()
    d.stop()
    assert d.alive_pids() == []


# ---------------------------------------------------------------------- life cycle with dummies


def test_start_wait_and_ordered_stop(tmp_path):
    build, calls, order = _dummies(tmp_path, {"worker-1": "stubborn"})
    lines: list[str] = []
    d = Deployment(
        workers=2,
        port=0,
        extra_scheduler_args=("--fake-workers", "2"),
        start_timeout_s=60,
        stop_timeout_s=0.5,
        restart_backoff_s=0.05,
        command=build,
        notify=lines.append,
    )
    with d:
        run_dir = d.run_dir
        assert run_dir.name.startswith("fastswitch-")
        assert d.address.startswith("127.0.0.1:") and d.port > 0
        assert set(d.metrics_ports) == {"kvstore", "scheduler", "worker-0", "worker-1"}
        assert len(set(d.metrics_ports.values())) == 4
        assert [c[0] for c in calls] == ["kvstore", "scheduler", "worker", "worker"]
        for _, flags in calls:
            assert flags[flags.index("--deployment-id") + 1] == d.deployment_id
        assert len(d.alive_pids()) == 4
        assert {p.name for p in run_dir.iterdir()} >= {"kvstore.log", "worker-1.log"}
        assert d.wait(timeout_s=0.2) is None
        assert list(d.children) == ["kvstore", "scheduler", "worker-0", "worker-1"]
        # A worker that dies is restarted (the same flags), and the deployment goes on.
        killed = d.child("worker-0")
        killed.kill()
        eventually_sync(lambda: d.restarts.get("worker-0") == 1, what="worker-0 restarted")
        assert d.child("worker-0").pid != killed.pid and d.child("worker-0").alive()
        assert calls[-1][0] == "worker" and calls[-1][1] == calls[2][1]
        asyncio.run(wait_healthy(d.child("worker-0").spec.health_target, timeout_s=30))
        assert d.wait(timeout_s=0.2) is None
        # The scheduler is the one child that is not restarted: the deployment is over.
        d.child("scheduler").kill()
        assert d.wait(timeout_s=10) == "scheduler"
        assert d.restarts.get("scheduler") == 0
    _assert_clean(d, run_dir)
    assert "restarted (pid" in "".join(lines) and "scheduler exited" in "".join(lines)
    # the workers (worker-1 ignored SIGTERM and was killed), then the store
    assert order.read_text().split() == ["worker", "worker", "kvstore"]
    d.stop()  # idempotent
    with pytest.raises(RuntimeError, match="starts once"):
        d.start()


def test_child_crash_fails_start_with_log_tail(tmp_path):
    build, _, _ = _dummies(tmp_path, {"worker-0": "crash"})
    d = Deployment(port=0, extra_scheduler_args=("--fake-workers", "1"), command=build)
    with pytest.raises(DeploymentError) as info:
        d.start()
    message = str(info.value)
    assert "worker-0 exited with code 3" in message
    assert "boom: worker cannot start" in message
    _assert_clean(d, d.run_dir)


@pytest.mark.slow
def test_unhealthy_child_times_out(tmp_path):
    build, _, _ = _dummies(tmp_path, {"scheduler": "unhealthy"})
    d = Deployment(
        port=0, extra_scheduler_args=("--fake-workers", "1"), start_timeout_s=6, command=build
    )
    with pytest.raises(DeploymentError, match=r"scheduler: .* not healthy"):
        d.start()
    _assert_clean(d, d.run_dir)


@pytest.mark.slow
def test_workers_that_never_join_time_out(tmp_path):
    build, _, _ = _dummies(tmp_path, {})
    d = Deployment(
        workers=2,
        port=0,
        extra_scheduler_args=("--fake-workers", "1"),
        start_timeout_s=6,
        command=build,
    )
    with pytest.raises(DeploymentError, match="only 1 of 2 workers joined"):
        d.start()
    _assert_clean(d, d.run_dir)


async def test_start_inside_a_running_event_loop(tmp_path):
    build, _, _ = _dummies(tmp_path, {"kvstore": "crash"})
    d = Deployment(port=0, command=build)
    with pytest.raises(DeploymentError, match="kvstore exited with code 3"):
        d.start()
    _assert_clean(d, d.run_dir)


def test_port_in_use_is_a_deployment_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        d = Deployment(port=busy.getsockname()[1], command=lambda service, flags: ["true"])
        with pytest.raises(DeploymentError, match="in use"):
            d.start()
    assert d.alive_pids() == []


def test_missing_executable_is_a_deployment_error():
    d = Deployment(port=0, command=lambda service, flags: ["/nonexistent/fastswitch-x"])
    with pytest.raises(DeploymentError, match="cannot start kvstore"):
        d.start()
    _assert_clean(d, d.run_dir)


# ---------------------------------------------------------- placement, ports, kept logs


def test_worker_i_on_cuda_i_when_cuda_is_present():
    assert worker_devices((), 3, lambda: 4) == ("cuda:0", "cuda:1", "cuda:2")
    assert worker_devices((), 2, lambda: 0) == ()  # no CUDA: each worker's own choice (CPU)
    assert worker_devices((), 3, lambda: 2) == ("cuda:0", "cuda:1", "cuda:0")  # they share


def test_devices_given_are_one_for_all_or_one_per_worker():
    never = lambda: pytest.fail("CUDA must not be probed when devices are given")  # noqa: E731
    assert worker_devices(("cpu",), 2, never) == ("cpu", "cpu")
    assert worker_devices(("cuda:0", "cuda:2"), 2, never) == ("cuda:0", "cuda:2")
    with pytest.raises(ValueError, match="3 devices for 2 workers"):
        worker_devices(("cpu", "cpu", "cpu"), 2, never)
    with pytest.raises(ValueError, match="cpu, cuda, cuda:N"):
        worker_devices(("gpu0",), 1, never)
    with pytest.raises(ValueError):
        DeploymentConfig(workers=2, devices=("cuda:0", "cuda:1", "cuda:2"))


def _free_base(count: int) -> int:
    for _ in range(50):
        base = free_port()
        if base + count < 65536 and all(port_is_free(base + i) for i in range(count)):
            return base
    pytest.skip("no run of free ports")


def test_metrics_ports_from_a_base_and_logs_that_survive_stop(tmp_path):
    build, _, _ = _dummies(tmp_path, {})
    base = _free_base(4)
    logs = tmp_path / "logs"
    cfg = DeploymentConfig(
        workers=2,
        port=0,
        metrics_port=base,
        log_dir=logs,
        extra_scheduler_args=("--fake-workers", "2"),
        stop_timeout_s=5,
    )
    with Deployment(cfg, command=build) as d:
        assert d.metrics_ports == {
            "kvstore": base + 1,
            "scheduler": base,
            "worker-0": base + 2,
            "worker-1": base + 3,
        }
        assert d.log_dir == logs
        run_dir = d.run_dir
    _assert_clean(d, run_dir)
    assert {p.name for p in logs.iterdir()} == {
        "kvstore.log",
        "scheduler.log",
        "worker-0.log",
        "worker-1.log",
    }
    assert f"=== kvstore of deployment {d.deployment_id}" in (logs / "kvstore.log").read_text()


def test_a_second_run_appends_to_kept_logs_and_tails_only_its_own(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "kvstore.log").write_text("old run: boom\n")
    build, _, _ = _dummies(tmp_path, {"kvstore": "crash"})
    d = Deployment(DeploymentConfig(port=0, log_dir=logs), command=build)
    with pytest.raises(DeploymentError) as info:
        d.start()
    assert "boom: kvstore cannot start" in str(info.value)
    assert "old run" not in str(info.value)
    assert (logs / "kvstore.log").read_text().startswith("old run: boom\n")


def test_a_taken_metrics_port_refuses_before_any_child(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        base = busy.getsockname()[1]
        d = Deployment(DeploymentConfig(port=0, metrics_port=base), command=lambda s, f: ["true"])
        with pytest.raises(StartRefused, match=f"port {base} on 127.0.0.1 .scheduler metrics."):
            d.start()
    assert d.children == {}


def test_a_child_that_keeps_crashing_is_given_up_on(tmp_path):
    """Restarts are bounded: a worker that dies quickly more than max_restarts times in a row
    ends the deployment's wait with its name; the back-off doubles between tries."""
    build, _, _ = _dummies(tmp_path, {})
    lines: list[str] = []
    with Deployment(
        workers=1,
        port=0,
        extra_scheduler_args=("--fake-workers", "1"),
        stop_timeout_s=0.5,
        restart_backoff_s=0.05,
        max_restarts=2,
        command=build,
        notify=lines.append,
    ) as d:
        for n in (1, 2):
            d.child("worker-0").kill()
            eventually_sync(lambda n=n: d.restarts.get("worker-0") == n, what=f"restart {n}")
        d.child("worker-0").kill()
        assert d.wait(timeout_s=10) == "worker-0"
        assert d.restarts["worker-0"] == 2
    text = "\n".join(lines)
    assert "restarting it in 0.1s" in text  # 0.05, then doubled
    assert "not restarting it" in text


def test_restart_policy_back_off_is_bounded():
    from fastswitch.deploy.supervisor import RestartPolicy

    p = RestartPolicy(backoff_s=0.5, max_backoff_s=4.0)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="restart back-off"):
        DeploymentConfig(restart_backoff_s=5, restart_max_backoff_s=1)
