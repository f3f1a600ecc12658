"""Authenticated tenants through a real deployment (``fastswitch up --api-keys FILE``): both
doors take the same key file, the HTTP door reaches the scheduler with the launcher's service
key and serves alice and bob as themselves; on gRPC a key acts only for its tenant, sees only
its own statistics, and a guess at another tenant's retained prompt gets no cached tokens."""

from __future__ import annotations

import openai
import pytest

from client import AsyncClient, NotFound, PermissionDenied, Unauthenticated

pytestmark = pytest.mark.system

SHARED = "a long system prompt only alice has sent before, with her secrets in it. " * 4


def door(dep, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{dep.http_url}/v1", api_key=key, max_retries=0, timeout=60)


async def test_the_http_door_serves_each_key_as_its_tenant(tenants):
    for key in ("sk-alice-0000", "sk-bob-00000", "sk-alice-0000"):
        done = await door(tenants, key).completions.create(
            model="tiny",
            prompt="hi",
            max_tokens=3,
            user="mallory",  # user cannot override
        )
        assert done.usage.completion_tokens == 3
    with pytest.raises(openai.AuthenticationError):
        await door(tenants, "sk-mallory-00").completions.create(model="tiny", prompt="hi")
    async with AsyncClient(tenants.address, api_key=tenants.admin_key) as admin:
        rows = {t.tenant: t for t in (await admin.stats()).tenants}
    assert rows["alice"].finished == 2 and rows["bob"].finished == 1 and "mallory" not in rows


async def test_grpc_keys_act_for_their_tenant_and_see_only_themselves(tenants):
    async with AsyncClient(tenants.address, api_key="") as anonymous:
        with pytest.raises(Unauthenticated):
            await anonymous.stats()
    async with AsyncClient(tenants.address, api_key="sk-wrong-0000") as wrong:
        with pytest.raises(Unauthenticated):
            await wrong.generate("hi", max_tokens=2)
    async with (
        AsyncClient(tenants.address, api_key="sk-alice-0000") as alice,
        AsyncClient(tenants.address, api_key="sk-bob-00000") as bob,
    ):
        with pytest.raises(PermissionDenied):
            await alice.generate("hi", max_tokens=2, tenant="bob")
        await alice.generate("hi", max_tokens=2, tenant="alice.batch")
        await bob.generate("hi", max_tokens=2, request_id="bob-1")
        with pytest.raises(NotFound):
            await alice.cancel("bob-1")
        mine = await alice.stats()
        assert {t.tenant for t in mine.tenants} <= {"alice", "alice.batch"}
        assert "alice.batch" in {t.tenant for t in mine.tenants}
        assert len(mine.workers) == 1  # readiness is visible, load is not
    async with AsyncClient(tenants.address, api_key="sk-ops-00000") as ops:
        assert {"alice", "alice.batch", "bob"} <= {t.tenant for t in (await ops.stats()).tenants}


async def test_a_guess_at_another_tenant_s_retained_prompt_gets_no_cached_tokens(tenants):
    async with (
        AsyncClient(tenants.address, api_key="sk-alice-0000", timeout_s=120) as alice,
        AsyncClient(tenants.address, api_key="sk-bob-00000", timeout_s=120) as bob,
    ):
        first = await alice.generate(SHARED + "one", max_tokens=4, retain_ttl_s=300)
        assert first.metrics.cached_prompt_tokens == 0
        guess = await bob.generate(SHARED + "two", max_tokens=4)
        again = await alice.generate(SHARED + "three", max_tokens=4)
    assert guess.metrics.cached_prompt_tokens == 0  # bob learns nothing of alice's prompt
    assert again.metrics.cached_prompt_tokens > 0  # while alice's prefix was retained all along
    assert again.token_ids and guess.token_ids
