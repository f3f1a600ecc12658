"""The worker's config: flag defaults, the empty flags that mean "none", mode defaults and
validation."""

from __future__ import annotations

import pytest

from servekit.names import SwapLayout
from worker_svc.config import WorkerConfig, build_parser, config_from_args


def config(*argv: str) -> WorkerConfig:
    return config_from_args(build_parser().parse_args(["--scheduler", "127.0.0.1:1", *argv]))


def test_defaults_mean_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FASTSWITCH_KVSTORE", "FASTSWITCH_THREADS", "FASTSWITCH_ADVERTISE"):
        monkeypatch.delenv(name, raising=False)
    cfg = config("--listen", "unix:///tmp/w7.sock")
    assert cfg.kvstore is None and cfg.threads is None and cfg.device_kv_blocks is None
    assert cfg.advertise == "unix:///tmp/w7.sock"
    assert (cfg.swap_layout, cfg.swap_sync) == (SwapLayout.GROUP, False)


def test_the_internal_plane_defaults_to_unix_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's own listener and the scheduler it dials are internal: Unix sockets named after
    the deployment, the scheduler's matching its default --internal-listen."""
    for name in ("FASTSWITCH_LISTEN", "FASTSWITCH_SCHEDULER", "FASTSWITCH_DEPLOYMENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    args = ["--deployment-id", "d2", "--worker-id", "w-1"]
    cfg = config_from_args(build_parser().parse_args(args))
    assert cfg.listen == cfg.advertise == "unix:///tmp/fastswitch-d2-worker-w-1.sock"
    assert cfg.scheduler == "unix:///tmp/fastswitch-d2-scheduler.sock"
    from scheduler_svc.server import build_parser as scheduler_parser
    from scheduler_svc.server import config_from_args as scheduler_config

    sched = scheduler_config(scheduler_parser().parse_args(["--deployment-id", "d2"]))
    assert sched.internal_listen == cfg.scheduler


def test_a_tcp_listener_needs_the_deployment_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTSWITCH_DEPLOYMENT_SECRET", raising=False)
    with pytest.raises(ValueError, match=r"--listen 0\.0\.0\.0:50071 is TCP"):
        config("--listen", "0.0.0.0:50071")
    monkeypatch.setenv("FASTSWITCH_DEPLOYMENT_SECRET", "a-secret-of-sixteen-chars")
    assert config("--listen", "0.0.0.0:50071").plane.secret == "a-secret-of-sixteen-chars"


def test_given_values_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTSWITCH_THREADS", "3")
    cfg = config("--kvstore", "unix:///tmp/kv.sock", "--device-kv-blocks", "64")
    assert (cfg.kvstore, cfg.threads, cfg.device_kv_blocks) == ("unix:///tmp/kv.sock", 3, 64)


def test_the_baseline_mode_sets_the_swap_defaults() -> None:
    cfg = config("--mode", "vllm-baseline")
    assert (cfg.swap_layout, cfg.swap_sync) == (SwapLayout.PER_LAYER, True)
    assert config("--mode", "vllm-baseline", "--swap-layout", "group").swap_layout == "group"
    v1 = config("--mode", "vllm-v1")  # it swaps only when its scheduler is told to: the same way
    assert (v1.swap_layout, v1.swap_sync) == (SwapLayout.PER_LAYER, True)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--block-size", "12"), "power of two"),
        (("--device-kv-blocks", "0"), "--device-kv-blocks"),
        (("--device-kv-fraction", "1.5"), "--device-kv-fraction"),
        (("--dtype", "int8"), "--dtype"),
        (("--swap-layout", "diagonal"), "--swap-layout"),
    ],
)
def test_bad_values_name_the_flag(argv: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        config(*argv)
