"""API keys on the scheduler's public API: an in-process grpc.aio server with the key
interceptor, a fake worker on the real StepLink stream (which needs no key), and calls as
alice, bob, the door (a service key) and an operator (an admin key)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import eventually
from prometheus_client import CollectorRegistry
from sched_fakes import LinkWorker

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from proto import worker_pb2_grpc as wk_grpc
from scheduler_svc.auth import OPEN, ApiKeyInterceptor, Caller
from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.errors import NotFound, PermissionDenied
from scheduler_svc.frontend import Frontend, NewRequest
from scheduler_svc.metrics import SchedulerMetrics
from scheduler_svc.policy import make_policy
from scheduler_svc.servicer import REJECT_REASONS, FastSwitchServicer, StepLinkServicer
from scheduler_svc.tenancy import PriorityClasses
from servekit.keys import Identity, KeyRing
from servekit.service import GrpcService
from servekit.tokenizer import load_tokenizer

FINGERPRINT = "test-model"
KEYS = {
    "sk-alice-0001": Identity("alice"),
    "sk-bob-00001": Identity("bob", priority=5),
    "sk-door-0001": Identity("door", role="service"),
    "sk-ops-00001": Identity("ops", role="admin"),
}
ALICE, BOB, DOOR, OPS = (((("authorization", f"Bearer {k}"),)) for k in KEYS)


@pytest.fixture
async def keyed() -> AsyncIterator[tuple[str, Frontend, LinkWorker]]:
    keys = KeyRing(KEYS)
    registry = CollectorRegistry()
    core = SchedulerCore(CoreConfig(), make_policy("fcfs"), eos_token_ids=[257])
    frontend = Frontend(
        core, load_tokenizer("tiny"), vocab_size=262, max_model_len=256, max_tokens_limit=200
    )
    frontend.priority_classes = PriorityClasses(keys.priority_classes())
    service = GrpcService(
        "scheduler-auth-test",
        listen="127.0.0.1:0",
        metrics_port=None,
        registry=registry,
        interceptors=[ApiKeyInterceptor(keys)],
    )
    metrics = SchedulerMetrics(registry, core, model="tiny", reject_reasons=REJECT_REASONS)
    service.add(
        api_grpc.add_FastSwitchServicer_to_server,
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
    target = f"127.0.0.1:{service.bound_port}"
    worker = LinkWorker(target, fingerprint=FINGERPRINT)
    worker.start()
    try:
        await asyncio.wait_for(worker.joined.wait(), 5)
        yield target, frontend, worker
    finally:
        await worker.kill()
        await frontend.shutdown()
        await service.stop(0.5)


def gen(tenant: str = "", max_tokens: int = 4, request_id: str = "") -> api.GenerateRequest:
    return api.GenerateRequest(
        request_id=request_id,
        token_ids=api.TokenIds(ids=[1, 2, 3]),
        sampling=api.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        tenant=tenant,
    )


async def run(stub, req, metadata) -> api.GenerateChunk:
    last = None
    async for chunk in stub.Generate(req, timeout=10, metadata=metadata):
        last = chunk
    assert last is not None
    return last


async def code_of(awaitable) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable
    return err.value.code()


async def test_no_key_or_a_bad_key_is_unauthenticated_and_health_stays_open(keyed):
    target, _, _ = keyed
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        for metadata in (
            None,
            (("authorization", "Bearer sk-alice-0002"),),  # a guess one character off
            (("authorization", "sk-alice-0001"),),  # no scheme
            (("authorization", "Basic sk-alice-0001"),),
        ):
            assert await code_of(run(stub, gen(), metadata)) == grpc.StatusCode.UNAUTHENTICATED
            call = stub.GetStats(api.StatsRequest(), timeout=5, metadata=metadata)
            assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
            call = stub.Cancel(api.CancelRequest(request_id="x"), timeout=5, metadata=metadata)
            assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        done = await run(stub, gen(), ALICE)  # the worker joined StepLink with no key at all
        assert done.finish_reason == api.FINISH_REASON_LENGTH


async def test_a_key_acts_for_its_tenant_or_a_narrowing_never_another(keyed):
    target, frontend, _ = keyed
    seen: list[str] = []
    frontend.on_finish = lambda req: seen.append(req.tenant)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        for tenant in ("bob", "alicex", "alic", "default", "bob.alice"):
            code = await code_of(run(stub, gen(tenant), ALICE))
            assert code == grpc.StatusCode.PERMISSION_DENIED, tenant
            chat = stub.Chat(api.ChatRequest(tenant=tenant, message="hi"), metadata=ALICE)
            assert await code_of(_drain(chat)) == grpc.StatusCode.PERMISSION_DENIED
            end = api.EndConversationRequest(conversation_id="conv-x", tenant=tenant)
            call = stub.EndConversation(end, timeout=5, metadata=ALICE)
            assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
        await run(stub, gen(""), ALICE)
        await run(stub, gen("alice"), ALICE)
        await run(stub, gen("alice.sub"), ALICE)
        await run(stub, gen("bob"), DOOR)  # the door acts for the tenants it authenticated
        await run(stub, gen(""), DOOR)
    assert seen == ["alice", "alice", "alice.sub", "bob", "door"]


async def _drain(call) -> None:
    async for _ in call:
        pass


async def test_another_tenant_s_request_is_not_found_and_unaffected(keyed):
    target, frontend, worker = keyed
    worker.step_delay_s = 0.02
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        call = stub.Generate(gen(max_tokens=120, request_id="bobs"), timeout=30, metadata=BOB)
        chunks = aiter(call)
        first = await anext(chunks)
        assert first.request_id == "bobs"

        async def not_found(rpc, msg, metadata) -> None:
            err = await code_of(rpc(msg, timeout=5, metadata=metadata))
            assert err == grpc.StatusCode.NOT_FOUND

        for tenant in ("", "alice", "alice.sub"):
            await not_found(stub.Cancel, api.CancelRequest(request_id="bobs", tenant=tenant), ALICE)
            msg = api.SetPriorityRequest(request_id="bobs", priority=-3, tenant=tenant)
            await not_found(stub.SetPriority, msg, ALICE)
        # Another tenant's id and an unknown id answer alike, message included.
        msgs = []
        for rid in ("bobs", "nobody-has-this"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Cancel(api.CancelRequest(request_id=rid), timeout=5, metadata=ALICE)
            msgs.append(err.value.details().replace(rid, "ID"))
        assert msgs[0] == msgs[1]
        req = frontend.core.get("bobs")
        assert req is not None and not req.is_finished and req.priority == 5  # bob's class
        # Bob himself (and an operator) reach it; a priority above bob's class is capped.
        await stub.SetPriority(api.SetPriorityRequest(request_id="bobs", priority=9), metadata=BOB)
        assert frontend.core.get("bobs").priority == 5
        await stub.SetPriority(api.SetPriorityRequest(request_id="bobs", priority=2), metadata=OPS)
        assert frontend.core.get("bobs").priority == 2
        assert (await stub.Cancel(api.CancelRequest(request_id="bobs"), metadata=BOB)).cancelled
        tokens = len(first.token_ids)
        last = first
        async for chunk in chunks:
            tokens += len(chunk.token_ids)
            last = chunk
        assert last.finish_reason == api.FINISH_REASON_CANCELLED and 0 < tokens < 120


async def test_stats_show_a_tenant_only_itself_and_an_admin_everyone(keyed):
    target, _, _ = keyed
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        await run(stub, gen(max_tokens=3), ALICE)
        await run(stub, gen("alice.sub", max_tokens=3), ALICE)
        await run(stub, gen(max_tokens=5), BOB)
        await run(stub, gen(max_tokens=5), BOB)

        async def stats(metadata) -> api.StatsResponse:
            return await stub.GetStats(api.StatsRequest(), timeout=5, metadata=metadata)

        mine = await stats(ALICE)
        assert {t.tenant for t in mine.tenants} == {"alice", "alice.sub"}
        assert mine.finished == 2 and sum(t.output_tokens for t in mine.tenants) == 6
        assert [w.worker_id for w in mine.workers] == ["w0"]  # readiness, not load
        assert mine.workers[0].num_blocks == 32 and mine.workers[0].steps == 0
        assert mine.max_model_len == 256 and mine.policy == "fcfs"
        bobs = await stats(BOB)
        assert {t.tenant for t in bobs.tenants} == {"bob"} and bobs.finished == 2
        everyone = await stats(OPS)
        assert {t.tenant for t in everyone.tenants} == {"alice", "alice.sub", "bob"}
        assert everyone.finished == 4 and everyone.workers[0].steps > 0
        door = await stats(DOOR)  # the all-tenants view needs an admin key
        assert list(door.tenants) == []


async def test_conversations_of_another_tenant_are_not_found(keyed):
    target, _, _ = keyed
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        first = api.ChatRequest(message="hello", sampling=api.SamplingParams(max_tokens=2))
        last = None
        async for chunk in stub.Chat(first, timeout=10, metadata=ALICE):
            last = chunk
        conv = last.conversation_id
        again = api.ChatRequest(
            conversation_id=conv, message="more", sampling=api.SamplingParams(max_tokens=2)
        )
        for metadata in (BOB, OPS):  # the conversation is alice's, not the operator's either
            chat = stub.Chat(again, timeout=10, metadata=metadata)
            assert await code_of(_drain(chat)) == grpc.StatusCode.NOT_FOUND
            end = stub.EndConversation(
                api.EndConversationRequest(conversation_id=conv), timeout=5, metadata=metadata
            )
            assert await code_of(end) == grpc.StatusCode.NOT_FOUND
        await _drain(stub.Chat(again, timeout=10, metadata=ALICE))
        end = api.EndConversationRequest(conversation_id=conv, tenant="alice")
        await stub.EndConversation(end, timeout=5, metadata=OPS)  # naming the tenant: allowed
        chat = stub.Chat(again, timeout=10, metadata=ALICE)
        assert await code_of(_drain(chat)) == grpc.StatusCode.NOT_FOUND


async def test_without_keys_the_tenant_field_scopes_cancel_and_set_priority(keyed):
    _, frontend, worker = keyed
    worker.step_delay_s = 0.02
    stream = await frontend.open(
        NewRequest(None, [1, 2], max_tokens=120, ignore_eos=True, tenant="b", request_id="r")
    )
    await eventually(lambda: stream.request.output_ids, what="b's request to run")
    for scope in ("a", "b.x", "bb"):
        with pytest.raises(NotFound):
            await frontend.cancel("r", scope)
        with pytest.raises(NotFound):
            await frontend.set_priority("r", 3, scope)
    assert await frontend.cancel("r", "b")
    await frontend.close(stream)


def test_a_caller_resolves_its_tenant_and_scope():
    assert OPEN.tenant("") == "default" and OPEN.tenant("bob") == "bob"
    assert OPEN.scope("") is None and OPEN.scope("bob") == "bob" and OPEN.stats_scope is None
    alice = Caller(Identity("alice"))
    assert alice.tenant("") == "alice" and alice.tenant("alice.a.b") == "alice.a.b"
    assert alice.scope("") == "alice" and alice.stats_scope == "alice"
    with pytest.raises(PermissionDenied) as err:
        alice.tenant("mallory-" + "x" * 10_000)
    assert "mallory" not in str(err.value) and len(str(err.value)) < 100  # no echo
    door = Caller(Identity("door", role="service"))
    assert door.tenant("bob") == "bob" and door.scope("") is None and door.stats_scope == "door"
    ops = Caller(Identity("ops", role="admin"))
    assert ops.scope("") is None and ops.stats_scope is None


def test_priority_classes_cap_and_default():
    classes = PriorityClasses({"bob": 5, "alice": -1, "alice.vip": 3})
    assert classes.apply("bob", 0) == 5 and classes.apply("bob", 9) == 5
    assert classes.apply("bob", 2) == 2 and classes.apply("bob", -7) == -7
    assert classes.apply("alice.x.y", 0) == -1 and classes.apply("alice.vip.z", 10) == 3
    assert classes.apply("carol", 9) == 9 and classes.apply("bobby", 9) == 9
    assert not PriorityClasses()


def test_key_file_weights_merge_with_the_tenants_flag_which_wins(tmp_path):
    from scheduler_svc.server import build_parser, config_from_args, tenant_weights

    keys = tmp_path / "keys.txt"
    keys.write_text("sk-alice-0001 alice weight=2\nsk-bob-00001 bob weight=3\n")
    more = tmp_path / "more.txt"
    more.write_text("sk-door-0001 door role=service\n")
    argv = ["--api-keys", str(keys), "--api-keys", str(more), "--tenants", "bob=5,carol=1"]
    cfg = config_from_args(build_parser().parse_args(argv))
    ring = KeyRing.load(cfg.api_keys)
    assert ring.tenants() == {"alice", "bob", "door"}
    assert tenant_weights(cfg, ring) == {"alice": 2.0, "bob": 5.0, "carol": 1.0}


async def test_generate_many_checks_the_key_per_call_and_the_tenant_per_request(keyed):
    target, frontend, _ = keyed
    seen: list[str] = []
    frontend.on_finish = lambda req: seen.append(req.tenant)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = api_grpc.FastSwitchStub(ch)
        anonymous = stub.GenerateMany()
        await anonymous.write(api.ManyRequest(tag=1, generate=gen()))
        assert await code_of(anonymous.read()) == grpc.StatusCode.UNAUTHENTICATED
        call = stub.GenerateMany(metadata=ALICE)
        for tag, tenant in ((1, "bob"), (2, ""), (3, "alice.batch")):
            await call.write(api.ManyRequest(tag=tag, generate=gen(tenant)))
        await call.done_writing()
        ended: dict[int, api.TaggedChunk] = {}
        async for msg in call:
            for tc in msg.chunks:
                if tc.code or tc.chunk.finish_reason:
                    ended[tc.tag] = tc
    assert ended[1].code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert ended[2].chunk.finish_reason == ended[3].chunk.finish_reason == api.FINISH_REASON_LENGTH
    assert sorted(seen) == ["alice", "alice.batch"]
