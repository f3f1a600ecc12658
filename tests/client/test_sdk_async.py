"""AsyncClient against the fake scheduler of conftest.py."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest

import client
from client import (
    AsyncClient,
    DeadlineExceeded,
    FastSwitchError,
    FinishReason,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


async def test_generate_assembles_chunks(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        result = await c.generate("hello", max_tokens=4, tenant="alice", seed=7, priority=2)
    assert result.token_ids == (100, 101, 102, 103)
    assert result.text == "t100 t101 t102 t103 "
    assert result.finish_reason is FinishReason.LENGTH
    assert result.finish_reason == "length"
    assert result.request_id.startswith("req-")
    assert result.worker_id == "worker-0"
    assert result.conversation_id is None
    m = result.metrics
    assert (m.prompt_tokens, m.cached_prompt_tokens, m.preemptions) == (5, 2, 1)
    assert m.tbt_s == (0.002, 0.002, 0.002)
    assert result.client_ttft_s is not None and result.client_ttft_s > 0
    assert len(result.client_tbt_s) == 3
    assert result.client_e2e_s >= result.client_ttft_s
    sent = fake.generate_requests[0]
    assert sent.text == "hello" and sent.tenant == "alice" and sent.priority == 2
    assert sent.sampling.max_tokens == 4 and sent.sampling.HasField("seed")
    assert sent.sampling.seed == 7


async def test_token_ids_prompt_stop_tokens_and_request_id(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        result = await c.generate(
            prompt_token_ids=[1, 2, 3], max_tokens=8, stop_token_ids=[102], request_id="mine"
        )
        old_form: Any = [102]  # stop=<token ids>, before stop took strings
        with pytest.warns(DeprecationWarning, match="stop_token_ids"):
            old = await c.generate(prompt_token_ids=[1, 2, 3], max_tokens=8, stop=old_form)
    assert result.finish_reason is FinishReason.STOP
    assert result.token_ids == (100, 101, 102) == old.token_ids
    assert result.request_id == "mine"
    sent, sent_old = fake.generate_requests
    assert sent.WhichOneof("prompt") == "token_ids"
    assert list(sent.token_ids.ids) == [1, 2, 3]
    assert list(sent.sampling.stop_token_ids) == [102] == list(sent_old.sampling.stop_token_ids)
    assert list(sent.sampling.stop) == [] == list(sent_old.sampling.stop)
    assert not sent.sampling.HasField("seed")
    assert not sent.HasField("retain_ttl_s")


async def test_stop_strings_and_retain_ttl_s_are_sent(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        await c.generate("hello", max_tokens=2, stop="END", retain_ttl_s=0)
        [_ async for _ in c.generate_stream("hello", stop=["a", "b"], retain_ttl_s=12.5)]
    until_evicted, timed = fake.generate_requests
    assert list(until_evicted.sampling.stop) == ["END"]
    assert until_evicted.HasField("retain_ttl_s") and until_evicted.retain_ttl_s == 0.0
    assert list(timed.sampling.stop) == ["a", "b"] and timed.retain_ttl_s == 12.5


async def test_streaming_yields_typed_chunks(fake_server):
    address, _ = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        chunks = [ch async for ch in c.generate_stream("hi", max_tokens=3)]
    assert [ch.token_ids for ch in chunks] == [(100,), (101,), (102,)]
    assert [ch.finish_reason for ch in chunks] == [None, None, FinishReason.LENGTH]
    assert chunks[0].metrics is None and chunks[-1].metrics is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"prompt": "a", "prompt_token_ids": [1]}, "exactly one"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "stop": ["x", None]}, "stop"),
        ({"prompt": "a", "retain_ttl_s": -1}, "retain_ttl_s"),
        ({"prompt": "a", "retain_ttl_s": float("inf")}, "retain_ttl_s"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt_token_ids": []}, "empty"),
    ],
)
async def test_bad_arguments_raise_before_any_rpc(fake_server, kwargs, match):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        with pytest.raises(ValueError, match=match):
            await c.generate(**kwargs)
        with pytest.raises(ValueError, match=match):
            c.generate_stream(**kwargs)
    assert fake.generate_requests == []


@pytest.mark.parametrize(
    ("prompt", "error", "code"),
    [
        ("invalid", InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        ("notfound", NotFound, grpc.StatusCode.NOT_FOUND),
        ("exhausted", ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("unavailable", Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_status_codes_map_to_typed_errors(fake_server, prompt, error, code):
    address, _ = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        with pytest.raises(error) as info:
            await c.generate(prompt)
        with pytest.raises(error):
            async for _ in c.generate_stream(prompt):
                pass
    assert isinstance(info.value, FastSwitchError)
    assert info.value.code == code
    assert info.value.details == f"fake says {prompt}"


async def test_nothing_listening_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with AsyncClient(f"127.0.0.1:{port}", timeout_s=5) as c:
        with pytest.raises(Unavailable):
            await c.stats()
        with pytest.raises(Unavailable):
            await c.generate("hello")


async def test_deadline_exceeded(fake_server):
    address, _ = fake_server
    async with AsyncClient(address, timeout_s=0.2) as c:
        with pytest.raises(DeadlineExceeded):
            await c.generate("slow")
        assert (await c.generate("hello", timeout_s=5)).token_ids  # a per-call deadline wins
        with pytest.raises(DeadlineExceeded):  # and bounds the whole stream, not each message
            async for _ in c.generate_stream("forever", timeout_s=0.2):
                pass


async def test_breaking_out_of_a_stream_cancels_it_on_the_server(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        async for chunk in c.generate_stream("forever", request_id="r-break"):
            assert chunk.token_ids == (0,)
            break
        await asyncio.wait_for(fake.cancel_seen.wait(), timeout=5)
    assert fake.cancelled == {"r-break"}


async def test_cancelling_the_awaiting_task_cancels_the_request(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        task = asyncio.create_task(c.generate("forever", request_id="r-task"))
        started = fake.started.setdefault("r-task", asyncio.Event())
        await asyncio.wait_for(started.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake.cancel_seen.wait(), timeout=5)
    assert fake.cancelled == {"r-task"}


async def test_stream_cancel_method(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        stream = c.generate_stream("forever", request_id="r-cancel")
        await stream.__anext__()
        stream.cancel()
        with pytest.raises(client.Cancelled):
            await stream.__anext__()
        await asyncio.wait_for(fake.cancel_seen.wait(), timeout=5)


async def test_cancel_set_priority_and_stats(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        async with c.generate_stream("forever", request_id="r-ctl") as stream:
            await stream.__anext__()
            await c.set_priority("r-ctl", 5)
            assert fake.priorities == {"r-ctl": 5}
            assert await c.cancel("r-ctl") is True
        assert await c.cancel("nobody") is False
        with pytest.raises(NotFound):
            await c.set_priority("nobody", 1)
        stats = await c.stats()
    assert (stats.waiting, stats.running, stats.finished, stats.preemptions) == (1, 2, 7, 4)
    assert (stats.policy, stats.mode) == ("vtc", "fastswitch")
    assert [t.tenant for t in stats.tenants] == ["alice", "bob"]
    alice = stats.tenant("alice")
    assert alice is not None and alice.virtual_counter == 12.5 and alice.output_tokens == 30
    assert stats.tenant("carol") is None
    assert stats.workers[0].worker_id == "worker-0" and stats.workers[0].num_blocks == 64
    assert stats.max_model_len == 2048


async def test_stats_without_a_context_length(fake_server):
    address, fake = fake_server
    fake.max_model_len = 0  # an older scheduler
    async with AsyncClient(address, timeout_s=5) as c:
        assert (await c.stats()).max_model_len is None


async def test_chat_conversation_id(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        chat = c.chat(tenant="alice", system="be brief", ttl_s=30)
        assert chat.conversation_id is None
        first = await chat.send("hi", max_tokens=2)
        conv = chat.conversation_id
        assert conv is not None and first.conversation_id == conv
        chunks = [ch async for ch in chat.send_stream("more", max_tokens=2)]
        assert {ch.conversation_id for ch in chunks} == {conv}
        assert await chat.end() == 3
        assert await chat.end() == 0
        with pytest.raises(RuntimeError):
            await chat.send("again")
    first_req, second_req = fake.chat_requests
    assert (first_req.conversation_id, first_req.system, first_req.tenant) == (
        "",
        "be brief",
        "alice",
    )
    assert first_req.ttl_s == 30
    assert (second_req.conversation_id, second_req.system) == (conv, "")
    assert fake.ended == [conv]


async def test_chat_one_turn_at_a_time_and_context_manager(fake_server):
    address, fake = fake_server
    async with AsyncClient(address, timeout_s=5) as c:
        async with c.chat() as chat:
            stream = chat.send_stream("hi", max_tokens=2)
            with pytest.raises(RuntimeError, match="in progress"):
                chat.send_stream("too soon")
            async for _ in stream:
                pass
            await chat.send("next", max_tokens=1)
            conv = chat.conversation_id
        with pytest.raises(NotFound):
            await c.end_conversation("conv-unknown")
    assert fake.ended == [conv]


async def test_closed_client_refuses_calls(fake_server):
    address, _ = fake_server
    c = AsyncClient(address)
    await c.close()
    with pytest.raises(RuntimeError, match="closed"):
        await c.stats()


def test_public_names():
    assert client.FastSwitchClient is client.AsyncClient
    for name in client.__all__:
        assert getattr(client, name).__doc__, name


async def test_closing_the_client_cancels_calls_in_flight(fake_server):
    address, fake = fake_server
    c = AsyncClient(address, timeout_s=5)
    task = asyncio.create_task(c.generate("forever", request_id="r-close"))
    started = fake.started.setdefault("r-close", asyncio.Event())
    await asyncio.wait_for(started.wait(), timeout=5)
    await c.close()
    with pytest.raises(client.Cancelled):
        await task
    await asyncio.wait_for(fake.cancel_seen.wait(), timeout=5)
    assert fake.cancelled == {"r-close"}
