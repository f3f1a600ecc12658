"""The HTTP door of a real deployment, through the official ``openai`` client: the same tokens
as the gRPC door, streaming, usage, multi-turn reuse by content, disconnects, error statuses."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import openai
import pytest

from client import AsyncClient
from servekit.tokenizer import load_tokenizer

pytestmark = pytest.mark.system

PROMPT = "The quick brown fox jumps over the lazy dog. " * 3


async def until(cond, *, timeout_s: float, what: str) -> None:
    """Polls an async condition (bounded); AssertionError naming `what` after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await cond():
        assert loop.time() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.02)


def api(dep, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{dep.http_url}/v1",
        api_key=kw.pop("key", "none"),
        max_retries=0,
        timeout=60,
        **kw,
    )


async def test_models_lists_the_served_model(door):
    models = await api(door).models.list()
    assert [m.id for m in models.data] == ["tiny"]


async def test_completion_equals_the_grpc_path_token_for_token(door):
    done = await api(door).completions.create(
        model="tiny", prompt=PROMPT, max_tokens=24, temperature=0
    )
    async with AsyncClient(door.address) as grpc_client:
        ref = await grpc_client.generate(PROMPT, max_tokens=24)
    assert done.choices[0].text == ref.text
    assert done.usage.completion_tokens == len(ref.token_ids) == 24
    assert done.usage.prompt_tokens == len(load_tokenizer("tiny").encode_prompt(PROMPT))
    assert done.choices[0].finish_reason == "length"


async def test_chat_completion_equals_grpc_on_the_rendered_template(door):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    done = await api(door).chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, temperature=0
    )
    ids = load_tokenizer("tiny").render_chat(messages, add_generation_prompt=True)
    async with AsyncClient(door.address) as grpc_client:
        ref = await grpc_client.generate(prompt_token_ids=ids, max_tokens=20)
    assert done.choices[0].message.content == ref.text
    assert done.choices[0].message.role == "assistant"
    assert done.usage.prompt_tokens == len(ids) and done.usage.completion_tokens == 20


@pytest.mark.parametrize("chat", [False, True])
async def test_streamed_chunks_concatenate_to_the_whole_answer(door, chat):
    client = api(door)
    kw = {"model": "tiny", "max_tokens": 32, "temperature": 0, "seed": 3}
    if chat:
        msgs = [{"role": "user", "content": PROMPT}]
        whole = (
            (await client.chat.completions.create(messages=msgs, **kw)).choices[0].message.content
        )
        stream = await client.chat.completions.create(
            messages=msgs, stream=True, stream_options={"include_usage": True}, **kw
        )
    else:
        whole = (await client.completions.create(prompt=PROMPT, **kw)).choices[0].text
        stream = await client.completions.create(
            prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **kw
        )
    parts, finishes, usage = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text = choice.delta.content if chat else choice.text
            parts.append(text or "")
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert "".join(parts) == whole
    assert finishes == ["length"]
    assert usage is not None and usage.completion_tokens == 32


async def test_sampled_requests_with_a_seed_repeat(door):
    client = api(door)
    kw = {"model": "tiny", "prompt": PROMPT, "max_tokens": 16, "temperature": 0.9, "seed": 11}
    a = await client.completions.create(**kw)
    b = await client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text


async def _five_turns(dep) -> tuple[list[str], list[int]]:
    client = api(dep)
    messages = [{"role": "system", "content": "You are a terse assistant. " * 4}]
    replies, cached = [], []
    for turn in range(5):
        messages.append(
            {"role": "user", "content": f"Turn {turn}: tell me more about item {turn}."}
        )
        done = await client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=24, temperature=0, user="chatter"
        )
        reply = done.choices[0].message.content
        replies.append(reply)
        cached.append(done.usage.prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": reply})
    return replies, cached


async def test_five_turn_chat_reuses_earlier_turns_and_answers_as_without_reuse(
    door, door_no_reuse
):
    replies, cached = await _five_turns(door)
    plain, plain_cached = await _five_turns(door_no_reuse)
    assert replies == plain
    assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached
    assert plain_cached == [0] * 5


async def test_a_client_that_leaves_mid_stream_frees_its_blocks(door):
    body = {
        "model": "tiny",
        "prompt": PROMPT,
        "max_tokens": 1500,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    url = f"{door.http_url}/v1/completions"
    async with httpx.AsyncClient(timeout=30) as http, http.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break  # one event, then hang up
    async with AsyncClient(door.address) as grpc_client:

        async def freed() -> bool:
            s = await grpc_client.stats()
            return s.running == 0 and all(w.free_blocks == w.num_blocks for w in s.workers)

        await until(freed, timeout_s=30, what="the cancelled request's blocks freed")
        stats = await grpc_client.stats()
    assert stats.cancelled >= 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "tiny", "prompt": "hi", "max_tokens": -1}, 400),
        ({"model": "tiny", "prompt": "hi", "n": 2}, 400),
        ({"model": "tiny", "prompt": "x" * 5000}, 400),  # over the context
        ({"model": "no-such-model", "prompt": "hi"}, 404),
    ],
)
async def test_error_statuses_through_the_official_client(door, body, status):
    with pytest.raises(openai.APIStatusError) as info:
        await api(door).completions.create(**body)
    assert info.value.status_code == status
    assert info.value.body["message"]  # OpenAI's error object: the client unwraps "error"


async def test_fuzzed_requests_get_json_4xx_and_the_server_keeps_serving(door):
    bodies = [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"model": 1}',
        b'{"model":"tiny","prompt":{"a":1}}',
        b'{"model":"tiny","messages":"hi"}',
        b'{"model":"tiny","prompt":"hi","max_tokens":1e9}',
        b'{"model":"tiny","prompt":"hi","stop":[1,2]}',
        "\u00ff\u0000".encode(),
        b'{"model":"tiny","prompt":"hi","unknown_field":true}',
        json.dumps({"model": "tiny", "prompt": "x" * (9 << 20)}).encode(),
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        for route in ("/v1/completions", "/v1/chat/completions"):
            for body in bodies:
                r = await http.post(
                    f"{door.http_url}{route}",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                assert 400 <= r.status_code < 500, (route, body[:40], r.status_code, r.text)
                assert r.json()["error"]["message"]
        r = await http.get(f"{door.http_url}/v1/models")
        assert r.status_code == 200
        done = await api(door).completions.create(model="tiny", prompt="hi", max_tokens=2)
        assert done.usage.completion_tokens == 2


async def test_keys_limits_and_draining(keyed):
    with pytest.raises(openai.AuthenticationError):
        await api(keyed, key="sk-wrong-000").models.list()
    alice = api(keyed, key="sk-alice-0000")
    slow = asyncio.ensure_future(
        alice.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=400,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    )
    async with AsyncClient(keyed.address, api_key=keyed.admin_key) as grpc_client:

        async def running() -> bool:
            return (await grpc_client.stats()).running == 1

        await until(running, timeout_s=30, what="alice's request running")
        with pytest.raises(openai.RateLimitError):
            await api(keyed, key="sk-bob-00000").completions.create(model="tiny", prompt="hi")
        keyed.child("api").proc.send_signal(signal.SIGTERM)  # drains: new work 503, alice ends

        async def draining() -> bool:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(f"{keyed.http_url}/health")).status_code == 503

        await until(draining, timeout_s=10, what="the door to say it drains")
        with pytest.raises(openai.APIStatusError) as info:
            await api(keyed, key="sk-bob-00000").completions.create(model="tiny", prompt="hi")
        assert info.value.status_code == 503 and info.value.body["code"] == "draining"
        done = await slow
        assert done.usage.completion_tokens == 400
        tenants = {t.tenant for t in (await grpc_client.stats()).tenants}
    assert "alice" in tenants and "bob" not in tenants


async def test_the_door_exports_exactly_its_documented_metrics(door):
    from metrics_doc import documented, exported

    await api(door).completions.create(model="tiny", prompt="hi", max_tokens=2)
    async with httpx.AsyncClient(timeout=30) as http:
        text = (await http.get(f"{door.http_url}/metrics")).text
    assert exported(text) == documented()["api"]
    assert 'route="/v1/completions",status="200"' in text


async def test_stop_strings_cut_the_text_also_when_they_span_chunks(door):
    client = api(door)
    kw = {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
    whole = (await client.completions.create(**kw)).choices[0].text
    printable = [i for i in range(8, len(whole) - 4) if whole[i : i + 3].isprintable()]
    assert printable, f"no printable 3 characters in {whole!r}"
    at = printable[0]
    stop = whole[at : at + 3]
    cut = whole[: whole.index(stop)]
    done = await client.completions.create(stop=[stop], **kw)
    assert done.choices[0].text == cut and done.choices[0].finish_reason == "stop"
    parts = []
    async for chunk in await client.completions.create(stop=stop, stream=True, **kw):
        parts.extend(c.text for c in chunk.choices)
    assert "".join(parts) == cut
