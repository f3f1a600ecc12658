"""The ``fastswitch`` and ``fastswitch-bench`` command lines: flags and FASTSWITCH_* variables
onto a deployment, one-line refusals with exit 2, versions, and the logs of ``up``."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fastswitch.bench import main as bench_main
from fastswitch.cli import build_parser
from fastswitch.cli import main as cli_main
from fastswitch.deploy import Layout, child_specs
from fastswitch.options import config_from_args
from servekit.config import package_version

LAYOUT = Layout(Path("/r"), "d", 7000, {"kvstore": 1, "scheduler": 2, "worker-0": 3, "worker-1": 4})


def up_config(argv: list[str]):
    return config_from_args(build_parser().parse_args(["up", *argv]), keep_logs=True)


def test_cli_errors_are_messages_not_tracebacks(capsys):
    assert cli_main(["up", "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err
    assert cli_main(["up", "--policy", "lottery"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli_main(["serve", "nope"]) == 2
    assert cli_main([]) == 2
    assert cli_main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli_main(["demo", "--help"]) == 0
    assert "--tenants" in capsys.readouterr().out


def test_up_flags_reach_the_services():
    cfg = up_config(
        [
            *("--workers", "2", "--host", "0.0.0.0", "--tenants", "a=2,b=1", "--strict-tenants"),
            *("--retain-generate", "30", "--no-retain", "--preemption", "recompute"),
            *("--max-batched-tokens", "256", "--max-num-seqs", "8", "--block-size", "32"),
            *("--device-kv-blocks", "64", "--host-kv-gib", "0.5", "--devices", "cpu"),
            *("--scheduler-arg=--preempt-margin 0", "--worker-arg", "--threads 2"),
        ]
    )
    assert cfg.devices == ("cpu",) and cfg.log_dir is not None
    layout = Layout(
        LAYOUT.run_dir, "d", 7000, LAYOUT.metrics_ports, host="0.0.0.0", devices=("cpu", "cpu")
    )
    kv, sched, w0, w1 = child_specs(cfg, layout)
    assert kv.flags[kv.flags.index("--host-kv-gib") + 1] == "0.5"
    assert sched.flags[:2] == ("--listen", "0.0.0.0:7000")
    assert sched.health_target == "127.0.0.1:7000"  # reached on loopback, bound everywhere
    flags = " ".join(sched.flags)
    for part in (
        "--tenants a=2,b=1 --strict-tenants --preemption recompute --retain-generate 30",
        "--no-retain --max-batched-tokens 256 --max-num-seqs 8",
    ):
        assert part in flags
    assert flags.endswith("--preempt-margin 0")
    for spec in (kv, sched, w0, w1):
        assert spec.flags[spec.flags.index("--metrics-host") + 1] == "0.0.0.0"
    worker = " ".join(w1.flags)
    assert f"--scheduler unix://{LAYOUT.run_dir}/scheduler-internal.sock" in worker
    assert "7000" not in worker  # workers never dial the public port
    assert "--device-kv-blocks 64 --block-size 32 --device cpu" in worker
    assert worker.endswith("--threads 2")


def test_unset_service_options_are_not_passed():
    _, sched, w0, _ = child_specs(up_config(["--workers", "2"]), LAYOUT)
    for flag in ("--tenants", "--strict-tenants", "--preemption", "--no-retain", "--max-num-seqs"):
        assert flag not in sched.flags
    assert "--metrics-host" not in sched.flags  # 127.0.0.1 is the services' own default
    assert "--device" not in w0.flags and "--block-size" not in w0.flags


def test_up_reads_every_setting_from_the_environment(monkeypatch, tmp_path):
    env = {
        "FASTSWITCH_WORKERS": "2",
        "FASTSWITCH_HOST": "0.0.0.0",
        "FASTSWITCH_PORT": "6001",
        "FASTSWITCH_METRICS_PORT": "9600",
        "FASTSWITCH_DEVICES": "cuda:0,cuda:2",
        "FASTSWITCH_TENANTS": "a=3",
        "FASTSWITCH_STRICT_TENANTS": "yes",
        "FASTSWITCH_NO_RETAIN": "1",
        "FASTSWITCH_MAX_NUM_SEQS": "4",
        "FASTSWITCH_SCHEDULER_ARG": "--preempt-margin 0",
        "FASTSWITCH_LOG_DIR": str(tmp_path),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = up_config([])
    assert (cfg.workers, cfg.host, cfg.port, cfg.metrics_port) == (2, "0.0.0.0", 6001, 9600)
    assert cfg.devices == ("cuda:0", "cuda:2") and cfg.tenants == "a=3"
    assert cfg.strict_tenants and not cfg.retain and cfg.max_num_seqs == 4
    assert cfg.extra_scheduler_args == ("--preempt-margin", "0") and cfg.log_dir == tmp_path
    assert up_config(["--workers", "1", "--devices", "cpu"]).workers == 1  # a flag wins
    monkeypatch.setenv("FASTSWITCH_STRICT_TENANTS", "maybe")
    assert cli_main(["up"]) == 2


def test_bad_model_is_one_line_and_exit_2(capsys, tmp_path):
    assert (
        cli_main(["up", "--http-port", "0", "--port", "0", "--model", str(tmp_path / "missing")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("fastswitch: error: bad model") and err.count("\n") == 1
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert cli_main(["up", "--http-port", "0", "--port", "0", "--model", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "bad model" in err and err.count("\n") == 1


@pytest.mark.parametrize("which", ["--port", "--metrics-port"])
def test_taken_port_is_one_line_and_exit_2(capsys, which):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = str(busy.getsockname()[1])
        argv = ["--port", taken] if which == "--port" else ["--port", "0", which, taken]
        argv = [*argv, "--http-port", "0"]
        assert cli_main(["up", *argv]) == 2
    err = capsys.readouterr().err
    assert f"port {taken} on 127.0.0.1" in err and "in use" in err and err.count("\n") == 1


def test_unreachable_store_is_one_line_and_exit_2(capsys, tmp_path):
    store = f"unix://{tmp_path}/none.sock"
    assert (
        cli_main(
            ["up", "--http-port", "0", "--port", "0", "--kvstore", store, "--start-timeout", "1"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"the KV store at {store} is unreachable" in err and err.count("\n") == 1


def _exit_status(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as done:  # a service's own parser exits on --version
        return int(done.code or 0)


@pytest.mark.parametrize(
    "argv", [[], ["serve", "scheduler"], ["serve", "worker"], ["serve", "kvstore"]]
)
def test_versions(capsys, argv):
    assert _exit_status([*argv, "--version"]) == 0
    assert capsys.readouterr().out.split()[-1] == package_version() != "unknown"


def test_bench_version(capsys):
    assert bench_main(["--version"]) == 0
    assert capsys.readouterr().out == f"fastswitch-bench {package_version()}\n"


def test_run_help_says_it_takes_one_prompt(capsys):
    assert cli_main(["--help"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.strip().startswith("run"))
    assert "one prompt" in line and "dataset" not in line
    assert cli_main(["run", "--help"]) == 0
    assert "one prompt" in capsys.readouterr().out


@pytest.mark.system
def test_up_keeps_its_logs_after_stop(tmp_path):
    logs = tmp_path / "logs"
    cmd = [sys.executable, "-m", "fastswitch", "up", "--port", "0", "--http-port", "0"]
    cmd += ["--log-dir", str(logs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("stops it" in s for s in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert f"logs: {logs} (kept after stop)\n" in lines, lines
        http = next(s for s in lines if s.startswith("OpenAI-compatible API at http://127.0.0.1:"))
        url = http.split()[3]
        with urllib.request.urlopen(f"{url}/models", timeout=10) as resp:
            assert json.load(resp)["data"][0]["id"] == "tiny"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"logs kept in {logs}" in err
    logs_kept = {p.name for p in logs.iterdir()}
    assert logs_kept == {"kvstore.log", "scheduler.log", "api.log", "worker-0.log"}
    assert "=== scheduler of deployment" in (logs / "scheduler.log").read_text()


def test_demo_tenant_count_is_not_the_deployments_tenant_weights():
    args = build_parser().parse_args(["demo", "--tenants", "5"])
    assert args.demo_tenants == 5
    assert config_from_args(args, keep_logs=False).tenants == ""


@pytest.mark.system
def test_the_readme_demo_runs_end_to_end(capsys):
    """The README's first command after set-up: `fastswitch demo` (a smaller workload)."""
    argv = ["demo", "--requests", "6", "--max-tokens", "8", "--tenants", "2", "--workers", "1"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "FastSwitch demo: 6 requests from 2 tenants" in out and "0 failed" in out


@pytest.mark.parametrize("bad", ["missing", "directory", "not-pem", "key-as-cert"])
def test_a_bad_tls_file_is_one_line_and_exit_2(capsys, tmp_path, bad):
    """Checked before any child starts: not a traceback, nor a scheduler failing in its log.
    (An unreadable file's EACCES takes the same path as a missing one's ENOENT.)"""
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    cert = {
        "missing": tmp_path / "none.pem",
        "directory": tmp_path,
        "not-pem": tmp_path / "junk.pem",
        "key-as-cert": key,
    }[bad]
    (tmp_path / "junk.pem").write_text("junk")
    argv = ["up", "--port", "0", "--no-http", "--tls-cert", str(cert), "--tls-key", str(key)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastswitch: error: --tls-cert {cert}") and err.count("\n") == 1
    if bad in ("missing", "directory"):
        assert "cannot read it" in err
