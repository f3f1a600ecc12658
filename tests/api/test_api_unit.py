"""The HTTP door in-process (httpx over ASGI, a scripted scheduler): OpenAI's shapes, every
error status, keys, limits, draining, and a fuzz of bodies that must always get a 4xx JSON."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from api_fakes import FakeClient, make_app, reply
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.errors import InvalidArgument, ResourceExhausted, Unavailable
from client.results import FinishReason, GenerationChunk, RequestMetrics
from servekit.tokenizer import load_tokenizer

BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "temperature": 0}


def http(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://door")


def sse(text: str) -> list[dict | str]:
    out: list[dict | str] = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_completion_shape_usage_and_what_reaches_the_scheduler():
    fake = FakeClient(script=reply(["he", "llo"], finish=FinishReason.STOP, prompt=6, cached=4))
    app, _, _ = make_app(fake)
    async with http(app) as c:
        r = await c.post("/v1/completions", json={**BODY, "user": "alice", "seed": 7, "top_p": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": "hello", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 2,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    (call,) = fake.calls
    assert call["prompt_token_ids"] == load_tokenizer("tiny").encode_prompt("hello")
    assert call["tenant"] == "alice" and call["options"].seed == 7 and call["options"].top_p == 0.5
    assert call["options"].max_tokens == 4 and call["options"].temperature == 0
    assert r.headers["x-request-id"] == call["request_id"]


async def test_defaults_follow_openai_temperature_one_and_the_rest_of_the_context():
    fake = FakeClient()
    app, _, _ = make_app(fake)
    async with http(app) as c:
        r = await c.post("/v1/completions", json={"model": "alias", "prompt": [1, 2, 3]})
    assert r.status_code == 200, r.text
    (call,) = fake.calls
    assert call["prompt_token_ids"] == [1, 2, 3] and call["tenant"] == "default"
    assert call["options"].temperature == 1.0 and call["options"].max_tokens == 2048 - 3


async def test_streamed_chat_chunks_role_first_then_text_finish_usage_done():
    fake = FakeClient(script=reply(["a", "", "b"], prompt=5))
    app, _, _ = make_app(fake)
    req = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 3,
    }
    async with http(app) as c:
        r = await c.post("/v1/chat/completions", json=req)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = [ch["choices"][0]["delta"].get("content") for ch in chunks[1:-1] if ch["choices"]]
    assert "".join(t for t in texts if t) == "ab" and "" not in texts[:-1]
    finals = [ch for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(ch["usage"] is None for ch in chunks[:-1])
    assert fake.calls[0]["options"].max_tokens == 3


async def test_a_message_of_several_tokens_is_one_event_of_the_same_text_and_ids():
    # the scheduler puts every token a stream has pending into one message (its send lagged,
    # or the door read late); the door writes each message as one event, adding nothing and
    # dropping nothing, so the events concatenate to the whole answer's text and ids
    script = [
        GenerationChunk("r", (1, 2, 3), "abc"),
        GenerationChunk("r", (4,), ""),  # the first bytes of a multi-byte character
        GenerationChunk("r", (5, 6), "\u00e9!"),
        GenerationChunk("r", (7,), ".", FinishReason.LENGTH, RequestMetrics(prompt_tokens=3)),
    ]
    body = {**BODY, "max_tokens": 7, "return_token_ids": True}
    app, _, _ = make_app(FakeClient(script=list(script)))
    async with http(app) as c:
        whole = (await c.post("/v1/completions", json=body)).json()
    app, _, _ = make_app(FakeClient(script=list(script)))
    async with http(app) as c:
        req = {**body, "stream": True, "stream_options": {"include_usage": True}}
        events = sse((await c.post("/v1/completions", json=req)).text)
    chunks = [e["choices"][0] for e in events if isinstance(e, dict) and e["choices"]]
    assert [ch["token_ids"] for ch in chunks[:-1]] == [list(m.token_ids) for m in script]
    assert chunks[-1]["finish_reason"] == "length" and chunks[-1]["text"] == ""
    assert "".join(ch["text"] for ch in chunks) == whole["choices"][0]["text"] == "abc\u00e9!."
    ids = [t for ch in chunks for t in ch["token_ids"]]
    assert ids == whole["choices"][0]["token_ids"] == list(range(1, 8))
    assert events[-2]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"] == 7


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (
            InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "max_tokens must be <= 4"),
            400,
            "invalid_request_error",
        ),
        (
            ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full (9 waiting)"),
            429,
            "rate_limit_error",
        ),
        (
            ResourceExhausted(grpc.StatusCode.RESOURCE_EXHAUSTED, "= 9 tokens exceed the largest"),
            400,
            "invalid_request_error",
        ),
        (
            Unavailable(grpc.StatusCode.UNAVAILABLE, "no worker has joined yet"),
            503,
            "service_unavailable",
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_scheduler_errors_become_openai_errors(error, status, kind, stream):
    app, _, _ = make_app(FakeClient(script=[error]))
    async with http(app) as c:
        r = await c.post("/v1/completions", json={**BODY, "stream": stream})
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"] == error.details


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "max_tokens": "4"}, "max_tokens"),
        ({**BODY, "max_tokens": 0}, "max_tokens"),
        ({**BODY, "temperature": 3}, "temperature"),
        ({**BODY, "n": 2}, "n"),
        ({**BODY, "logprobs": 1}, "logprobs"),
        ({**BODY, "echo": True}, "echo"),
        ({**BODY, "mystery": 1}, "mystery"),
        ({**BODY, "prompt": ["a", "b"]}, "prompt"),
        ({**BODY, "prompt": ""}, "prompt"),
        ({**BODY, "user": "no spaces allowed"}, "user"),
        ({"prompt": "x"}, "model"),
        ({**BODY, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(body, param):
    fake = FakeClient()
    app, _, _ = make_app(fake)
    async with http(app) as c:
        r = await c.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert fake.calls == []


async def test_chat_features_we_do_not_have_are_a_clear_400():
    app, _, _ = make_app(FakeClient())
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
    ]
    async with http(app) as c:
        for extra, param in cases:
            r = await c.post(
                "/v1/chat/completions", json={"model": "tiny", "messages": msgs, **extra}
            )
            assert r.status_code == 400, (extra, r.text)
            assert r.json()["error"]["param"].startswith(param), r.json()


async def test_unknown_model_and_route_are_404_json():
    app, _, _ = make_app(FakeClient())
    async with http(app) as c:
        r = await c.post("/v1/completions", json={**BODY, "model": "gpt-9"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await c.get("/v1/nothing-here")
        assert r.status_code == 404 and "error" in r.json()
        r = await c.get("/v1/models/gpt-9")
        assert r.status_code == 404
        r = await c.get("/v1/models/alias")
        assert r.status_code == 200 and r.json()["id"] == "alias"
        models = (await c.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["tiny", "alias"]


async def test_keys_name_the_tenant_and_everything_else_is_401():
    fake = FakeClient()
    app, _, _ = make_app(fake, keys={"sk-alice-123": "alice"})
    async with http(app) as c:
        assert (await c.get("/v1/models")).status_code == 401
        r = await c.post(
            "/v1/completions", json=BODY, headers={"authorization": "Bearer nope-nope"}
        )
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        ok = {"authorization": "Bearer sk-alice-123"}
        r = await c.post("/v1/completions", json={**BODY, "user": "mallory"}, headers=ok)
        assert r.status_code == 200, r.text
        assert (await c.get("/health")).status_code == 200  # probes need no key
    assert [call["tenant"] for call in fake.calls] == ["alice"]  # user cannot override the key


async def test_body_limit_is_413_also_when_chunked():
    app, _, _ = make_app(FakeClient(), max_body_bytes=1000)
    big = json.dumps({**BODY, "prompt": "x" * 2000}).encode()

    async def chunks():
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with http(app) as c:
        assert (await c.post("/v1/completions", content=big)).status_code == 413
        r = await c.post("/v1/completions", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert (await c.post("/v1/completions", json=BODY)).status_code == 200


async def test_over_capacity_is_429_and_draining_is_503():
    import asyncio

    fake = FakeClient(gap_s=0.2)
    app, state, _ = make_app(fake, max_in_flight=1)
    async with http(app) as c:
        slow = asyncio.create_task(c.post("/v1/completions", json=BODY))
        while state.in_flight == 0:
            await asyncio.sleep(0.01)
        r = await c.post("/v1/completions", json=BODY)
        assert r.status_code == 429 and r.json()["error"]["code"] == "over_capacity"
        assert (await slow).status_code == 200
        state.draining = True
        r = await c.post("/v1/completions", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        assert (await c.get("/health")).status_code == 503
    assert state.in_flight == 0


async def test_health_says_whether_a_worker_serves():
    fake = FakeClient(workers=0)
    app, _, _ = make_app(fake)
    async with http(app) as c:
        assert (await c.get("/health")).status_code == 503
        fake.workers = 2
        r = await c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok", "workers": 2}
        fake.workers = -1
        assert (await c.get("/health")).status_code == 503


async def test_metrics_count_answers_by_route_and_status():
    app, _, _ = make_app(FakeClient())
    async with http(app) as c:
        for _ in range(2):  # the second answer counts on the series the first one made
            await c.post("/v1/completions", json=BODY)
        await c.post("/v1/completions", json={**BODY, "n": 5})
        text = (await c.get("/metrics")).text
    assert (
        'fastswitch_http_requests_total{model="tiny",route="/v1/completions",status="200"} 2.0'
        in text
    )
    assert (
        'fastswitch_http_request_duration_seconds_count{model="tiny",route="/v1/completions"} 3.0'
        in text
    )
    assert (
        'fastswitch_http_requests_total{model="tiny",route="/v1/completions",status="400"} 1.0'
        in text
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "model",
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "n",
        "stream",
        "stream_options",
        "user",
        "priority",
        "top_k",
        "logprobs",
        "extra",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
    body=st.one_of(
        st.dictionaries(fields, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
    ),
)
async def test_fuzzed_bodies_get_a_json_4xx_or_an_answer_never_a_5xx(route, body):
    app, state, _ = make_app(FakeClient())
    async with http(app) as c:
        r = await c.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code < 500, (body, r.text)
        if r.status_code != 200:
            err = r.json()["error"]
            assert isinstance(err["message"], str) and err["message"]
        assert (await c.get("/v1/models")).status_code == 200
    assert state.in_flight == 0


@settings(max_examples=300, deadline=None)
@given(
    text=st.none() | st.text(),
    finish=st.sampled_from([None, "stop", "length"]),
    chat=st.booleans(),
    role=st.booleans(),
    ids=st.lists(st.integers(0, 1 << 31), max_size=5),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    model=st.text(min_size=1, max_size=10),
)
def test_stream_chunks_encode_to_the_json_openai_defines(
    text, finish, chat, role, ids, flags, model
):
    from api_svc.answers import Shape
    from api_svc.door import Usage

    token_ids, include_usage, continuous = flags
    shape = Shape('id-"1"', 17, model, chat, token_ids, include_usage, continuous)
    usage = Usage(prompt_tokens=3, completion_tokens=len(ids), cached_tokens=1)
    raw = shape.chunk(text, finish, usage=usage, role=role and chat, ids=ids)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    got = json.loads(raw[6:])
    choice: dict = {"index": 0}
    if chat:
        delta: dict = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    choice |= {"logprobs": None, "finish_reason": finish}
    if token_ids:
        choice["token_ids"] = ids
    want: dict = {
        "id": 'id-"1"',
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 17,
        "model": model,
        "choices": [choice],
    }
    if continuous:
        want["usage"] = usage.as_json()
    elif include_usage:
        want["usage"] = None
    assert got == want


async def test_the_schema_lists_the_generation_routes_with_their_bodies():
    app, _, _ = make_app(FakeClient())
    async with http(app) as c:
        doc = (await c.get("/openapi.json")).json()
    for path, model, field in [
        ("/v1/completions", "CompletionRequest", "prompt"),
        ("/v1/chat/completions", "ChatCompletionRequest", "messages"),
    ]:
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert ref == {"$ref": f"#/components/schemas/{model}"}
        assert field in doc["components"]["schemas"][model]["properties"]
    assert "ChatMessage" in doc["components"]["schemas"] and "/v1/models" in doc["paths"]


async def test_a_failure_of_ours_is_a_500_in_openai_shape_and_the_door_serves_on():
    fake = FakeClient()
    app, state, _ = make_app(fake)

    def broken(**_: object) -> None:
        raise RuntimeError("boom")

    fake.generate_stream = broken  # type: ignore[method-assign]
    async with http(app) as c:
        for stream in (False, True):
            r = await c.post("/v1/completions", json={**BODY, "stream": stream})
            assert r.status_code == 500, r.text
            assert r.json()["error"] == {
                "message": "internal error (RuntimeError)",
                "type": "server_error",
                "param": None,
                "code": "internal",
            }
        assert (await c.get("/v1/models")).status_code == 200
    assert state.in_flight == 0
