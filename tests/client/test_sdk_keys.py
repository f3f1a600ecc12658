"""The SDK's API key: sent as `authorization: Bearer KEY` on every kind of call, read from
$FASTSWITCH_API_KEY when not given; the tenant of Cancel and SetPriority."""

from __future__ import annotations

import asyncio

import pytest

from client import AsyncClient, Client
from client.aio import API_KEY_ENV

ALL_CALLS = {"Generate", "Chat", "EndConversation", "Cancel", "SetPriority", "GetStats"}


async def every_call(c: AsyncClient) -> None:
    await c.generate("hello", max_tokens=2)
    async with c.chat() as chat:
        await chat.send("hi", max_tokens=2)
    await c.cancel("r-1", tenant="alice.sub")
    with pytest.raises(Exception, match="unknown request"):
        await c.set_priority("r-1", 3, tenant="alice")
    await c.stats()


async def test_the_key_goes_with_every_call(fake_server, monkeypatch):
    address, fake = fake_server
    monkeypatch.setenv(API_KEY_ENV, "sk-from-env-1")
    async with AsyncClient(address, timeout_s=5, api_key="sk-alice-0001") as c:
        await every_call(c)
    assert {m for m, _ in fake.auth} == ALL_CALLS
    assert {a for _, a in fake.auth} == {"Bearer sk-alice-0001"}
    assert fake.cancels[0].tenant == "alice.sub" and fake.priority_requests[0].tenant == "alice"
    assert fake.generate_requests[0].tenant == ""  # the key's tenant, else the server's default


async def test_the_environment_gives_the_key_and_empty_sends_none(fake_server, monkeypatch):
    address, fake = fake_server
    monkeypatch.setenv(API_KEY_ENV, "sk-from-env-1")
    async with AsyncClient(address, timeout_s=5) as c:
        await c.stats()
    async with AsyncClient(address, timeout_s=5, api_key="") as c:
        await c.stats()
    monkeypatch.delenv(API_KEY_ENV)
    async with AsyncClient(address, timeout_s=5) as c:
        await c.stats()
    assert [a for _, a in fake.auth] == ["Bearer sk-from-env-1", None, None]


def _sync_calls(address: str) -> None:
    with Client(address, timeout_s=5, api_key="sk-bob-00001") as c:
        c.generate("hello", max_tokens=2)
        c.cancel("r-1", tenant="bob")
        c.stats()


async def test_the_sync_client_sends_it_too(fake_server):
    address, fake = fake_server
    await asyncio.to_thread(_sync_calls, address)
    assert [a for _, a in fake.auth] == ["Bearer sk-bob-00001"] * 3
    assert fake.cancels[0].tenant == "bob"


@pytest.mark.parametrize("key", [" sk-x-123456", "sk-x-123456\n", "sk-x\r\n-123456"])
def test_a_key_with_white_space_at_its_ends_or_line_breaks_is_refused(key):
    with pytest.raises(ValueError, match="api_key"):
        AsyncClient("127.0.0.1:1", api_key=key)
