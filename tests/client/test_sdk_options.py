"""SamplingOptions: keywords and the options object build the same request, in every call of the
async and sync clients."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from client import AsyncClient, Client, SamplingOptions
from client.options import SamplingArgs

KEYWORDS: SamplingArgs = {
    "max_tokens": 3,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "seed": 11,
    "stop": ["END", "\n\n"],
    "ignore_eos": True,
    "stop_token_ids": [101],
}
OPTIONS = SamplingOptions(
    max_tokens=3,
    temperature=0.7,
    top_p=0.9,
    top_k=5,
    seed=11,
    stop=("END", "\n\n"),
    ignore_eos=True,
    stop_token_ids=(101,),
)


def test_keyword_types_are_the_options_fields():
    assert set(SamplingArgs.__annotations__) == {f.name for f in dataclasses.fields(OPTIONS)}
    assert SamplingOptions(**KEYWORDS) == OPTIONS  # stop and stop_token_ids are kept as tuples
    assert SamplingOptions(stop="END").stop == ("END",)  # one string is one stop string


def test_options_validate_on_construction_and_update():
    for bad, match in (
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": 1 << 64}, "seed"),
        ({"stop": [1.5]}, "stop must be stop strings"),
        ({"stop": ["x", 2]}, "stop must be stop strings"),
        ({"stop_token_ids": ["x"]}, "stop_token_ids"),
    ):
        with pytest.raises(ValueError, match=match):
            SamplingOptions(**bad)
        with pytest.raises(ValueError, match=match):
            OPTIONS.updated(bad)
    assert OPTIONS.updated({}) is OPTIONS
    assert OPTIONS.updated({"stop": None}).stop == ()
    assert OPTIONS.updated({"stop": None}).stop_token_ids == (101,)
    assert OPTIONS.updated({"stop_token_ids": None}).stop_token_ids == ()
    assert OPTIONS.updated({"max_tokens": 8}) == dataclasses.replace(OPTIONS, max_tokens=8)
    default = SamplingOptions().to_proto()
    assert (default.max_tokens, default.temperature, default.top_p, default.top_k) == (16, 0, 1, 0)
    assert not default.HasField("seed") and not default.ignore_eos


async def test_generate_keywords_and_options_send_the_same_request(fake_server):
    address, fake = fake_server
    call = {"tenant": "alice", "priority": 2, "request_id": "r", "timeout_s": 5.0}
    async with AsyncClient(address, timeout_s=5) as c:
        by_keywords = await c.generate("hello", **call, **KEYWORDS)
        by_options = await c.generate("hello", **call, options=OPTIONS)
        [_ async for _ in c.generate_stream(prompt_token_ids=[1, 2], **KEYWORDS)]
        [_ async for _ in c.generate_stream(prompt_token_ids=[1, 2], options=OPTIONS)]
        # keywords override the options' fields
        mixed = dataclasses.replace(OPTIONS, max_tokens=9, temperature=0.0)
        await c.generate("hello", **call, options=mixed, max_tokens=3, temperature=0.7)
    assert by_keywords.token_ids == by_options.token_ids == (100, 101)  # stop id 101
    first, second, stream_kw, stream_opt, overridden = fake.generate_requests
    assert first == second == overridden
    assert stream_kw == stream_opt and stream_kw.sampling == first.sampling
    s = first.sampling
    assert (s.max_tokens, s.top_k, s.seed, list(s.stop_token_ids), s.ignore_eos) == (
        3,
        5,
        11,
        [101],
        True,
    )
    assert list(s.stop) == ["END", "\n\n"]
    assert s.temperature == pytest.approx(0.7) and s.top_p == pytest.approx(0.9)
    assert (first.tenant, first.priority, first.request_id) == ("alice", 2, "r")


async def test_chat_turn_keywords_and_options_send_the_same_sampling(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c, c.chat(tenant="bob") as chat:
        await chat.send("one", priority=1, **KEYWORDS)
        await chat.send("two", priority=1, options=OPTIONS)
        [_ async for _ in chat.send_stream("three", priority=1, options=OPTIONS)]
    one, two, three = fake.chat_requests
    assert one.sampling == two.sampling == three.sampling == OPTIONS.to_proto()
    assert one.priority == two.priority == three.priority == 1


def test_the_old_stop_token_ids_form_still_works_with_a_warning():
    legacy: dict[str, Any] = {"stop": (101, 7)}  # typed as strings now: the old form by Any
    with pytest.warns(DeprecationWarning, match="stop_token_ids"):
        old = SamplingOptions(max_tokens=3, **legacy)
    assert old == SamplingOptions(max_tokens=3, stop_token_ids=(101, 7))
    assert old.to_proto().stop == [] and list(old.to_proto().stop_token_ids) == [101, 7]
    # As a keyword it replaces the stop ids, as it did.
    keyword: Any = {"stop": [5]}
    with pytest.warns(DeprecationWarning):
        assert old.updated(keyword).stop_token_ids == (5,)


def _sync_calls(address: str) -> None:
    with Client(address, timeout_s=5) as c:
        c.generate("hello", tenant="carol", **KEYWORDS)
        c.generate("hello", tenant="carol", options=OPTIONS)
        list(c.generate_stream("hello", tenant="carol", options=OPTIONS, retain_ttl_s=30))
        with c.chat() as chat:
            chat.send("hi", **KEYWORDS)
            list(chat.send_stream("again", options=OPTIONS))


async def test_sync_client_forwards_keywords_and_options(fake_server):
    address, fake = fake_server
    await asyncio.to_thread(_sync_calls, address)
    a, b, c = fake.generate_requests
    assert a == b and a.tenant == "carol" and a.sampling == OPTIONS.to_proto()
    assert not a.HasField("retain_ttl_s") and c.retain_ttl_s == 30.0
    c.ClearField("retain_ttl_s")
    assert c == a
    assert [r.sampling for r in fake.chat_requests] == [OPTIONS.to_proto()] * 2
