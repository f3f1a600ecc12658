"""Tenant isolation of cached KV: two tenants with the same prompt never share a block, on the
device or in the host arena, unless the operator declared them a sharing group
(``--shared-prefix-tenants``); members of a group share both tiers, and outputs are the same
either way. ``step``/``drive`` check the core's integrity after every step."""

from __future__ import annotations

import pytest
from sched_fakes import drive, step
from test_core_device_cache import SYSTEM, expected, make, submit

from scheduler_svc.config import CoreConfig
from scheduler_svc.prefix_hash import group_salt, tenant_salt
from scheduler_svc.server import build_parser, config_from_args

GROUP = (("alice", "bob"),)
PROMPT = [*SYSTEM, 7, 8, 9]  # 24 tokens: 5 full blocks may be shared


def device_run(groups):
    """alice's prompt is cached on the device; then bob, carol and alice ask the same."""
    core, fakes = make(shared_prefix_tenants=groups)
    submit(core, PROMPT, tenant="alice")
    drive(core, fakes)
    reqs = {t: submit(core, PROMPT, tenant=t) for t in ("bob", "carol", "alice")}
    step(core, "w0", fakes["w0"])
    alloc = core.workers["w0"].allocator
    shared = {t: set(alloc.prefix_of(r.seq)) for t, r in reqs.items()}
    drive(core, fakes)
    for r in reqs.values():
        assert r.output_ids == expected(PROMPT, 6)
    return reqs, shared


def test_tenants_share_no_device_block_unless_declared_a_group():
    reqs, shared = device_run(())
    assert shared["alice"] and not shared["bob"] and not shared["carol"]
    assert reqs["bob"].device_cached_tokens == reqs["carol"].device_cached_tokens == 0
    reqs, shared = device_run(GROUP)
    assert shared["bob"] == shared["alice"] and len(shared["bob"]) == 5
    assert reqs["bob"].device_cached_tokens == 5 * 4
    assert not shared["carol"] and reqs["carol"].device_cached_tokens == 0  # not in the group


def host_run(groups):
    """alice's prompt is retained in the host arena (no device tier); then bob and carol."""
    core, fakes = make(
        cache=False, preemption="swap", min_swap_tokens=1, retain=True, shared_prefix_tenants=groups
    )
    first = submit(core, PROMPT, tenant="alice", retain=True)
    drive(core, fakes)
    retained = fakes["w0"].host.retained()
    assert retained > 0
    bob = submit(core, PROMPT, tenant="bob", retain=True)
    carol = submit(core, PROMPT, tenant="carol")
    drive(core, fakes)
    assert bob.output_ids == carol.output_ids == first.output_ids == expected(PROMPT, 6)
    return bob, carol, fakes["w0"].host.retained() - retained


def test_tenants_share_no_host_block_unless_declared_a_group():
    bob, carol, added = host_run(())
    assert bob.cached_prompt_tokens == carol.cached_prompt_tokens == 0
    assert added > 0  # bob's blocks are his own copies
    bob, carol, added = host_run(GROUP)
    assert bob.cached_prompt_tokens == 5 * 4 and carol.cached_prompt_tokens == 0
    assert added == 0  # bob's KV hashes as alice's: nothing new to retain


def test_a_group_salt_is_the_same_for_every_member_and_no_tenant_s():
    salt = group_salt(b"s", ["bob", "alice"], "m")
    assert salt == group_salt(b"s", ["alice", "bob"], "m")
    assert salt not in {tenant_salt(b"s", t, "m") for t in ("alice", "bob", "alice\x00bob")}
    assert salt != group_salt(b"s", ["alice", "bob"], "other-model")
    assert salt != group_salt(b"other-secret", ["alice", "bob"], "m")


def test_the_flag_declares_groups_and_is_off_by_default():
    parse = build_parser().parse_args
    assert config_from_args(parse([])).core.shared_prefix_tenants == ()
    cfg = config_from_args(
        parse(["--shared-prefix-tenants", "a, b,a", "--shared-prefix-tenants", "c,d"])
    )
    assert cfg.core.shared_prefix_tenants == (("a", "b"), ("c", "d"))
    with pytest.raises(ValueError, match="tenant"):
        config_from_args(parse(["--shared-prefix-tenants", "a,b c"]))


@pytest.mark.parametrize("groups", [(("a",),), (("a", "b"), ("b", "c")), (("a", ""),)])
def test_a_group_names_two_or_more_tenants_each_in_one_group(groups):
    with pytest.raises(ValueError, match="sharing group"):
        CoreConfig(shared_prefix_tenants=groups)
