"""The scheduler's servicers against an in-process grpc.aio server on 127.0.0.1:0, with a fake
worker speaking the real StepLink stream (no model, no processes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from polling import eventually
from prometheus_client import CollectorRegistry
from sched_fakes import LinkWorker, next_token

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc import convert
from scheduler_svc.config import CoreConfig
from scheduler_svc.conversations import ConversationBusy
from scheduler_svc.core import SchedulerCore
from scheduler_svc.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SchedulerError,
    Unavailable,
)
from scheduler_svc.frontend import Frontend, NewRequest
from scheduler_svc.handlers import add_fastswitch_servicer
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.policy import make_policy
from scheduler_svc.servicer import (
    REJECT_REASONS,
    FastSwitchServicer,
    StepLinkServicer,
    status_for,
)
from servekit.service import GrpcService
from servekit.tokenizer import UnavailableTokenizer, load_tokenizer

FINGERPRINT = "test-model"
VOCAB = 262
MAX_LEN = 256


@pytest.fixture
def registry() -> CollectorRegistry:
    """The scheduler's metrics registry (read with ``get_sample_value``)."""
    return CollectorRegistry()


@pytest.fixture
async def server(registry: CollectorRegistry) -> AsyncIterator[tuple[str, Frontend]]:
    core = SchedulerCore(CoreConfig(), make_policy("fcfs"), eos_token_ids=[257])
    frontend = Frontend(
        core,
        load_tokenizer("tiny"),
        vocab_size=VOCAB,
        max_model_len=MAX_LEN,
        max_tokens_limit=128,
        tenants={"a": 1.0, "b": 1.0},
    )
    service = GrpcService(
        "scheduler-test", listen="127.0.0.1:0", metrics_port=None, registry=registry
    )
    metrics = SchedulerMetrics(
        registry, core, model="tiny", tenants=("a", "b"), reject_reasons=REJECT_REASONS
    )
    frontend.on_step = metrics.on_step
    frontend.on_finish = metrics.on_finish
    service.add(
        add_fastswitch_servicer,
        FastSwitchServicer(frontend, metrics, policy="fcfs", mode="fastswitch"),
        "fastswitch.v1.FastSwitch",
    )
    service.add(
        wk_grpc.add_StepLinkServicer_to_server,
        StepLinkServicer(frontend, model_fingerprint=FINGERPRINT),
        "fastswitch.worker.v1.StepLink",
    )
    await service.start()
    service.set_serving(True)
    try:
        yield f"127.0.0.1:{service.bound_port}", frontend
    finally:
        await frontend.shutdown()
        await service.stop(0.5)


@pytest.fixture
async def worker(server) -> AsyncIterator[LinkWorker]:
    target, _ = server
    fake = LinkWorker(target, fingerprint=FINGERPRINT, vocab_size=VOCAB, max_model_len=MAX_LEN)
    fake.start()
    await asyncio.wait_for(fake.joined.wait(), 5)
    yield fake
    await fake.kill()


def request(
    prompt_ids=(1, 2, 3), max_tokens=8, tenant="a", retain_ttl_s=None, **kw
) -> api.GenerateRequest:
    out = api.GenerateRequest(
        token_ids=api.TokenIds(ids=list(prompt_ids)),
        sampling=api.SamplingParams(max_tokens=max_tokens, **kw),
        tenant=tenant,
    )
    if retain_ttl_s is not None:
        out.retain_ttl_s = retain_ttl_s
    return out


async def collect(stub, req) -> tuple[list[int], api.GenerateChunk]:
    tokens: list[int] = []
    last = None
    async for chunk in stub.Generate(req, timeout=10):
        tokens.extend(chunk.token_ids)
        last = chunk
    return tokens, last


async def test_generate_streams_tokens_with_metrics(server, worker):
    target, _ = server
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        results = await asyncio.gather(*(collect(stub, request((i, 5, 9), 6)) for i in range(6)))
    for i, (tokens, last) in enumerate(results):
        fed = [i, 5, 9]
        expected = []
        for _ in range(6):
            t = next_token(fed)
            expected.append(t)
            fed.append(t)
        assert tokens == expected
        assert last.finish_reason == api.FINISH_REASON_LENGTH
        assert last.metrics.ttft_s > 0 and len(last.metrics.tbt_s) == 5
        assert last.metrics.prompt_tokens == 3 and last.worker_id == "w0"
    async with grpc.aio.insecure_channel(target) as ch:
        stats = await api_grpc.FastSwitchStub(ch).GetStats(api.StatsRequest(), timeout=5)
    assert stats.finished == 6 and stats.policy == "fcfs" and stats.mode == "fastswitch"
    assert [(t.tenant, t.output_tokens, t.finished, t.weight) for t in stats.tenants] == [
        ("a", 36, 6, 1.0)
    ]
    (w,) = stats.workers
    assert (w.worker_id, w.num_blocks, w.free_blocks, w.running) == ("w0", 32, 32, 0)
    assert w.steps > 0 and w.mean_step_s == pytest.approx(w.step_s_total / w.steps)


async def test_text_prompts_are_tokenized_at_the_edge(server, worker):
    target, _ = server
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        by_text = await collect(
            stub,
            api.GenerateRequest(text="hi", sampling=api.SamplingParams(max_tokens=4), tenant="a"),
        )
        by_ids = await collect(stub, request([256, *b"hi"], 4))  # <bos> first
    assert by_text[0] == by_ids[0]


@pytest.mark.parametrize(
    ("req", "code", "fragment"),
    [
        (request(prompt_ids=()), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (request(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (request(max_tokens=500), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        (request(prompt_ids=[1] * 300), grpc.StatusCode.INVALID_ARGUMENT, "context"),
        (request(prompt_ids=[1, 99999]), grpc.StatusCode.INVALID_ARGUMENT, "vocabulary"),
        (request(tenant="mallory"), grpc.StatusCode.INVALID_ARGUMENT, "unknown tenant"),
        (request(temperature=-1), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (request(stop=["ok", ""]), grpc.StatusCode.INVALID_ARGUMENT, "stop string 1 must be"),
        (request(stop=["x"] * 17), grpc.StatusCode.INVALID_ARGUMENT, "at most 16 stop"),
        (request(stop=["é" * 257]), grpc.StatusCode.INVALID_ARGUMENT, "257 characters"),
        (request(retain_ttl_s=-1.0), grpc.StatusCode.INVALID_ARGUMENT, "retain_ttl_s"),
        (request(retain_ttl_s=float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "retain_ttl_s"),
        (
            request(prompt_ids=[1] * 100, max_tokens=100),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "capacity",
        ),
    ],
)
async def test_bad_input_gets_a_status_and_the_service_keeps_serving(
    server, worker, registry, req, code, fragment
):
    target, _ = server
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, req)
        assert err.value.code() == code
        assert fragment in err.value.details()
        tokens, _last = await collect(stub, request())
        assert len(tokens) == 8
    rejected = {
        r: registry.get_sample_value(
            "fastswitch_requests_rejected_total", {"model": "tiny", "reason": r}
        )
        for r in REJECT_REASONS
    }
    assert rejected == {r: 1.0 if r == code.name.lower() else 0.0 for r in REJECT_REASONS}
    ended = {"model": "tiny", "tenant": "a", "finish_reason": "length"}
    assert registry.get_sample_value("fastswitch_requests_total", ended) == 1


async def test_no_worker_is_unavailable(server, registry):
    target, _ = server
    async with grpc.aio.insecure_channel(target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(api_grpc.FastSwitchStub(ch), request())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    labels = {"model": "tiny", "reason": "unavailable"}
    assert registry.get_sample_value("fastswitch_requests_rejected_total", labels) == 1


async def test_client_leaving_mid_stream_cancels_and_frees(server, worker, registry):
    target, frontend = server
    worker.step_delay_s = 0.01
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        call = stub.Generate(request(max_tokens=100), timeout=10)
        async for _ in call:
            break
        call.cancel()
        slot = frontend.core.workers["w0"]
        for _ in range(200):
            if slot.allocator.num_free == slot.info.num_blocks and not worker.fed:
                break
            await asyncio.sleep(0.01)
        assert slot.allocator.num_free == slot.info.num_blocks
        assert worker.fed == {}
        stats = await stub.GetStats(api.StatsRequest(), timeout=5)
        assert stats.cancelled == 1 and stats.running == 0
    # The request the client left is counted once, as cancelled, with the tokens it got.
    ended = {"model": "tiny", "tenant": "a", "finish_reason": "cancelled"}
    await eventually(
        lambda: registry.get_sample_value("fastswitch_requests_total", ended) == 1,
        what="the cancelled request is counted",
    )
    assert registry.get_sample_value("fastswitch_requests_total", ended) == 1
    tenant = {"model": "tiny", "tenant": "a"}
    generated = registry.get_sample_value("fastswitch_generation_tokens_total", tenant)
    assert generated is not None and generated >= 1
    assert registry.get_sample_value("fastswitch_prompt_tokens_total", tenant) == 3


async def test_cancel_rpc_ends_the_stream(server, worker):
    target, _ = server
    worker.step_delay_s = 0.01
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        req = request(max_tokens=100)
        req.request_id = "r-1"
        call = stub.Generate(req, timeout=10)
        finish = None
        async for chunk in call:
            if chunk.token_ids and finish is None:
                assert (await stub.Cancel(api.CancelRequest(request_id="r-1"))).cancelled
            if chunk.finish_reason:
                finish = chunk.finish_reason
        assert finish == api.FINISH_REASON_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Cancel(api.CancelRequest(request_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_workers_of_another_model_or_a_taken_id_are_refused(server, worker):
    target, _ = server
    for fake, code in (
        (
            LinkWorker(target, "w1", fingerprint="other", max_model_len=MAX_LEN),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            LinkWorker(target, "w0", fingerprint=FINGERPRINT, max_model_len=MAX_LEN),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(fake.run(), 5)
        assert err.value.code() == code


async def test_a_worker_leaving_mid_request_loses_nothing(server, worker):
    target, _frontend = server
    worker.step_delay_s = 0.005
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        expected, _ = await collect(stub, request(max_tokens=30))
        pending = asyncio.create_task(collect(stub, request(max_tokens=30)))
        await asyncio.sleep(0.05)
        # w0 dies; w1 joins and recomputes the request from its token ids.
        replacement = LinkWorker(target, "w1", fingerprint=FINGERPRINT, max_model_len=MAX_LEN)
        await worker.kill()
        replacement.start()
        tokens, last = await asyncio.wait_for(pending, 10)
        await replacement.kill()
    assert tokens == expected and last.metrics.recomputes >= 1


async def chat_turn(stub, message, conversation_id="", tenant="a", system=""):
    req = api.ChatRequest(
        conversation_id=conversation_id,
        tenant=tenant,
        system=system,
        message=message,
        sampling=api.SamplingParams(max_tokens=5),
    )
    tokens, last = [], None
    async for chunk in stub.Chat(req, timeout=10):
        tokens.extend(chunk.token_ids)
        last = chunk
    return tokens, last


async def test_chat_keeps_the_exact_history_ids(server, worker):
    target, frontend = server
    tok = frontend.tokenizer
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        reply1, last1 = await chat_turn(stub, "hello", system="be brief")
        conv_id = last1.conversation_id
        assert conv_id.startswith("conv-")
        reply2, last2 = await chat_turn(stub, "again", conv_id)
        assert last2.conversation_id == conv_id
    first = tok.apply_chat_template([("system", "be brief"), ("user", "hello")])
    second = [*first, *reply1, 261, *tok.apply_chat_template([("user", "again")])[1:]]
    assert last1.metrics.prompt_tokens == len(first)
    assert last2.metrics.prompt_tokens == len(second)
    # The fake worker was fed exactly that history (its output depends on every id).
    fed = list(second)
    expected = []
    for _ in range(5):
        t = next_token(fed)
        expected.append(t)
        fed.append(t)
    assert reply2 == expected


async def test_conversations_are_private_and_can_be_ended(server, worker):
    target, _ = server
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        _, last = await chat_turn(stub, "mine", tenant="a")
        conv_id = last.conversation_id
        for kwargs in (
            {"conversation_id": conv_id, "tenant": "b"},
            {"conversation_id": "conv-nope", "tenant": "a"},
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await chat_turn(stub, "hi", **kwargs)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.EndConversation(
                api.EndConversationRequest(conversation_id=conv_id, tenant="b")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.EndConversation(api.EndConversationRequest(conversation_id=conv_id, tenant="a"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await chat_turn(stub, "hi", conv_id, tenant="a")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def greedy(prompt: list[int], n: int) -> list[int]:
    """The fake worker's n tokens after `prompt`."""
    fed, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(fed))
        fed.append(out[-1])
    return out


def stop_string_in_the_middle(text: str) -> str | None:
    """Two characters from the middle of `text` (no replacement character), or None."""
    for i in range(len(text) // 3, 2 * len(text) // 3):
        stop = text[i : i + 2]
        if len(stop) == 2 and "\ufffd" not in stop:
            return stop
    return None


async def test_a_stop_string_ends_the_text_before_it_and_frees_the_blocks(server, worker):
    target, frontend = server
    tok = frontend.tokenizer
    prompt, free = next(
        (p, s)
        for i in range(50)
        if (s := stop_string_in_the_middle(tok.decode(greedy(p := [i, 7, 7], 40)))) is not None
    )
    unconstrained = greedy(prompt, 40)
    text = tok.decode(unconstrained)
    k = next(n for n in range(1, 41) if free in tok.decode(unconstrained[:n]))
    plans = []
    frontend.on_step = lambda wid, plan, out: plans.append(plan)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        chunks = [c async for c in stub.Generate(request(prompt, 40, stop=[free]), timeout=10)]
        slot = frontend.core.workers["w0"]
        for _ in range(200):
            if slot.allocator.num_free == slot.info.num_blocks and not worker.fed:
                break
            await asyncio.sleep(0.01)
        stats = await stub.GetStats(api.StatsRequest(), timeout=5)
    assert chunks[-1].finish_reason == api.FINISH_REASON_STOP
    assert "".join(c.text for c in chunks) == text[: text.index(free)]
    assert [t for c in chunks for t in c.token_ids] == unconstrained[:k] and k < 40
    assert slot.allocator.num_free == slot.info.num_blocks and worker.fed == {}
    assert stats.finished == 1 and stats.cancelled == 0 and stats.running == 0
    # It stopped at once: no step computed it after the token that completed the stop string.
    seq = next(c.seq for p in plans for c in p.prefill)
    assert sum(seq in p.decode for p in plans) == k - 1


async def test_a_chat_turn_cut_by_a_stop_string_keeps_exactly_its_tokens(server, worker):
    target, frontend = server
    tok = frontend.tokenizer
    # A first message whose 5-token reply has a whole character after its first token.
    message, first, reply, stop = next(
        (m, f, r, c)
        for i in range(50)
        for m in [f"hello {i}"]
        for f in [tok.apply_chat_template([("user", m)])]
        for r in [greedy(f, 5)]
        for c in tok.decode(r[1:])
        if c != "\ufffd"
    )
    cut = next(n for n in range(1, 6) if stop in tok.decode(reply[:n]))
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        req = api.ChatRequest(
            tenant="a", message=message, sampling=api.SamplingParams(max_tokens=5, stop=[stop])
        )
        chunks = [c async for c in stub.Chat(req, timeout=10)]
        reply2, last2 = await chat_turn(stub, "again", chunks[-1].conversation_id)
    assert chunks[-1].finish_reason == api.FINISH_REASON_STOP
    assert [t for c in chunks for t in c.token_ids] == reply[:cut] and cut < 5
    assert "".join(c.text for c in chunks) == tok.decode(reply[:cut]).split(stop)[0]
    # The conversation's history holds exactly the tokens up to the stop.
    second = [*first, *reply[:cut], 261, *tok.apply_chat_template([("user", "again")])[1:]]
    assert last2.metrics.prompt_tokens == len(second)
    assert reply2 == greedy(second, 5)


async def test_stop_strings_need_a_tokenizer_that_gives_text():
    core = SchedulerCore(CoreConfig(), make_policy("fcfs"), eos_token_ids=[2])
    ids_only = UnavailableTokenizer(
        "/models/no-tokenizer", vocab_size=100, bos_token_id=None, eos_token_ids=(2,)
    )
    frontend = Frontend(core, ids_only, vocab_size=100, max_model_len=64, max_tokens_limit=8)
    new = NewRequest(prompt_text=None, prompt_ids=[1, 2], max_tokens=4)
    frontend.prepare(new)  # token ids alone are fine
    with pytest.raises(
        InvalidArgument, match=r"stop strings need the output text.*tokenizer\.json"
    ):
        frontend.prepare(NewRequest(prompt_text=None, prompt_ids=[1, 2], max_tokens=4, stop=("x",)))


async def test_retain_ttl_s_is_the_request_s_else_the_server_default(server, worker):
    _, frontend = server
    assert convert.new_request(request()).retain_ttl_s is None
    assert convert.new_request(request(retain_ttl_s=0.0)).retain_ttl_s == 0.0
    assert convert.new_request(request(retain_ttl_s=2.5)).retain_ttl_s == 2.5

    async def retained(default, own, chat=None):
        frontend.retain_generate_ttl_s = default
        new = NewRequest(None, [1, 2], max_tokens=2, tenant="a", retain_ttl_s=own)
        stream = await frontend.open(new, retain_ttl_s=chat)
        ttl = stream.request.retain_ttl_s
        await frontend.close(stream)
        return ttl

    assert await retained(None, None) is None
    assert await retained(30.0, None) == 30.0
    assert await retained(None, 5.0) == 5.0
    assert await retained(30.0, 0.0) == 0.0  # 0: kept until evicted, as --retain-generate 0
    assert await retained(30.0, 5.0, chat=600.0) == 600.0  # a chat turn: the conversation's


def test_every_scheduler_error_has_its_own_status_code():
    classes = [InvalidArgument, NotFound, ResourceExhausted, Unavailable, FailedPrecondition]
    codes = {status_for(cls("why")) for cls in [*classes, AlreadyExists]}
    assert grpc.StatusCode.INTERNAL not in codes and len(codes) == 6
    assert status_for(ConversationBusy("busy")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(SchedulerError("unmapped")) == grpc.StatusCode.INTERNAL
