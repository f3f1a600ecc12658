"""The synchronous Client against the fake scheduler (driven from a worker thread so the fake's
event loop keeps serving)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from client import Client, FinishReason, InvalidArgument, Stats


def _scenario(address: str) -> dict[str, object]:
    before = set(threading.enumerate())
    out: dict[str, object] = {}
    with Client(address, timeout_s=5) as c:
        result = c.generate("hello", max_tokens=3)
        out["tokens"] = result.token_ids
        out["finish"] = result.finish_reason
        out["stream"] = [
            ch.token_ids for ch in c.generate_stream(prompt_token_ids=[1], max_tokens=2)
        ]
        for _chunk in c.generate_stream("forever", request_id="sync-break"):
            break
        with pytest.raises(InvalidArgument):
            c.generate("invalid")
        with pytest.raises(ValueError):
            c.generate()
        out["stats"] = c.stats()
        out["cancel"] = c.cancel("nobody")
        with c.chat(tenant="bob") as chat:
            assert chat.conversation_id is None
            chat.send("hi", max_tokens=1)
            out["conv"] = chat.conversation_id
            out["turn2"] = [ch.conversation_id for ch in chat.send_stream("again", max_tokens=2)]
    c.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        c.stats()
    out["leaked"] = set(threading.enumerate()) - before
    return out


async def test_sync_client(fake_server):
    address, fake = fake_server
    out = await asyncio.to_thread(_scenario, address)
    assert out["tokens"] == (100, 101, 102)
    assert out["finish"] is FinishReason.LENGTH
    assert out["stream"] == [(100,), (101,)]
    assert isinstance(out["stats"], Stats)
    assert out["cancel"] is False
    conv = out["conv"]
    assert conv is not None and out["turn2"] == [conv, conv]
    assert fake.ended == [conv]
    await asyncio.wait_for(fake.cancel_seen.wait(), timeout=5)
    assert fake.cancelled == {"sync-break"}
    assert out["leaked"] == set()
