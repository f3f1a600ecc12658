"""Flags, FASTSWITCH_<FLAG> fallbacks and one-time validation of the store's config."""

from __future__ import annotations

import pytest

from kvstore_svc.config import KVStoreConfig, from_args


def test_defaults() -> None:
    cfg = from_args([], env={})
    assert cfg == KVStoreConfig()
    assert (cfg.listen, cfg.metrics_port, cfg.deployment_id) == ("127.0.0.1:50061", 9461, "default")
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
    cfg = from_args(["--host-kv-gib", "0.5", "--listen", "[::1]:0"], env=env)
    assert (cfg.host_kv_gib, cfg.listen) == (0.5, "[::1]:0")


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
    ],
)
def test_bad_values_name_themselves(argv: list[str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        from_args(argv, env={})


def test_malformed_number_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        from_args([], env={"FASTSWITCH_METRICS_PORT": "lots"})
    assert info.value.code == 2
