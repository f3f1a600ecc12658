"""Flags, FASTSWITCH_<FLAG> fallbacks and one-time validation of the store's config."""

from __future__ import annotations

import pytest

from kvstore_svc.config import KVStoreConfig, auto_host_kv_gib, from_args
from servekit import shm

GIB = 1 << 30
SECRET = "s3cret-of-this-deployment"


def test_defaults() -> None:
    cfg = from_args([], env={})
    assert cfg == KVStoreConfig()
    assert (cfg.metrics_port, cfg.deployment_id) == (9461, "default")
    assert cfg.listen == "unix:///tmp/fastswitch-default-kvstore.sock"  # the internal plane
    named = from_args(["--deployment-id", "d1"], env={})
    assert named.listen == "unix:///tmp/fastswitch-d1-kvstore.sock"
    assert (cfg.host_kv_gib, cfg.lease_s, cfg.arena_bytes) == (1.0, 30.0, 1 << 30)


def test_env_fallbacks_and_flags_win() -> None:
    env = {
        "FASTSWITCH_LISTEN": "unix:///tmp/kv.sock",
        "FASTSWITCH_HOST_KV_GIB": "2.5",
        "FASTSWITCH_METRICS_PORT": "0",
        "FASTSWITCH_DEPLOYMENT_ID": "from-env",
        "FASTSWITCH_LEASE_S": "7",
        "FASTSWITCH_LOG_LEVEL": "DEBUG",
    }
    cfg = from_args([], env=env)
    assert cfg == KVStoreConfig("unix:///tmp/kv.sock", 0, "from-env", 2.5, 7.0, "debug")
    env["FASTSWITCH_DEPLOYMENT_SECRET"] = SECRET
    cfg = from_args(["--host-kv-gib", "0.5", "--listen", "[::1]:0"], env=env)
    assert (cfg.host_kv_gib, cfg.listen, cfg.plane.secret) == (0.5, "[::1]:0", SECRET)


def test_a_tcp_listener_needs_the_deployment_secret(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"--listen 0.0.0.0:50061 is TCP.*deployment secret"):
        from_args(["--listen", "0.0.0.0:50061"], env={})
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    cfg = from_args(["--listen", "0.0.0.0:50061", "--deployment-secret-file", str(secret_file)], {})
    assert cfg.plane.secret == SECRET and SECRET not in repr(cfg)
    with pytest.raises(ValueError, match=">= 16 characters"):
        from_args(["--listen", "0.0.0.0:1"], env={"FASTSWITCH_DEPLOYMENT_SECRET": "short"})


def test_tenant_quota_flag_and_env() -> None:
    assert from_args([], env={}).tenant_quota_blocks == 0  # no quota
    env = {"FASTSWITCH_TENANT_QUOTA_BLOCKS": "64"}
    assert from_args([], env=env).tenant_quota_blocks == 64
    assert from_args(["--tenant-quota-blocks", "8"], env=env).tenant_quota_blocks == 8


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--host-kv-gib", "0"], "--host-kv-gib"),
        (["--host-kv-gib", "-1"], "--host-kv-gib"),
        (["--host-kv-gib", "nan"], "--host-kv-gib"),
        (["--lease-s", "0"], "--lease-s"),
        (["--metrics-port", "70000"], "70000"),
        (["--listen", "nonsense"], "nonsense"),
        (["--listen", "unix:relative.sock"], "unix:relative.sock"),
        (["--listen", "host:99999"], "host:99999"),
        (["--deployment-id", "a/b"], "a/b"),
        (["--log-level", "loud"], "loud"),
        (["--tenant-quota-blocks", "-1"], "--tenant-quota-blocks"),
        (["--host-kv-gib", "lots"], "--host-kv-gib must be a size in GiB or 'auto', got 'lots'"),
        (["--shm-reserve-gib", "-1"], "--shm-reserve-gib"),
    ],
)
def test_bad_values_name_themselves(argv: list[str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        from_args(argv, env={})


def test_malformed_number_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        from_args([], env={"FASTSWITCH_METRICS_PORT": "lots"})
    assert info.value.code == 2


def test_auto_arena_is_the_shm_size_less_the_reserve() -> None:
    asked = []

    def two_gib() -> int:
        asked.append(1)
        return 2 * GIB

    cfg = from_args(["--host-kv-gib", "auto"], env={}, shm_bytes=two_gib)
    assert (cfg.host_kv_gib, cfg.arena_bytes, cfg.host_kv_auto) == (1.5, 3 * GIB // 2, True)
    env = {"FASTSWITCH_HOST_KV_GIB": "AUTO", "FASTSWITCH_SHM_RESERVE_GIB": "0.25"}
    cfg = from_args([], env=env, shm_bytes=two_gib)
    assert (cfg.host_kv_gib, cfg.shm_reserve_gib) == (1.75, 0.25)
    # A size given in GiB never asks for the shm size, and the reserve does not apply to it.
    asked.clear()
    cfg = from_args(["--host-kv-gib", "3"], env=env, shm_bytes=two_gib)
    assert (cfg.host_kv_gib, cfg.host_kv_auto, asked) == (3.0, False, [])


def test_auto_arena_needs_room_beyond_the_reserve() -> None:
    with pytest.raises(ValueError, match=r"/dev/shm holds 0\.5 GiB, nothing left .* 0\.5"):
        from_args(["--host-kv-gib", "auto"], env={}, shm_bytes=lambda: GIB // 2)
    assert auto_host_kv_gib(GIB, 0) == 1.0


def test_shm_capacity_is_the_file_system_size(tmp_path) -> None:
    size = shm.capacity_bytes(tmp_path)
    assert size > 0 and size % 512 == 0
    (tmp_path / "f").write_bytes(b"x" * 4096)
    assert shm.capacity_bytes(tmp_path) == size  # the size, not what is free
