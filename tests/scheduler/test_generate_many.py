"""GenerateMany (scheduler_svc/many.py, client/mux.py): many tagged requests on one call, against
the in-process scheduler with a fake worker on the real StepLink stream. The same tokens as one
Generate call per request, fewer messages, and per-request statuses, cancels and deadlines that
leave nothing behind."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from polling import eventually
from sched_fakes import LinkWorker, next_token
from sched_server import FINGERPRINT, scheduler_server

from client import AsyncClient
from client.errors import Cancelled, DeadlineExceeded, InvalidArgument, Unavailable
from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from scheduler_svc.config import CoreConfig
from scheduler_svc.many import ManyCall
from scheduler_svc.servicer import status_for


def expected(prompt: list[int], n: int) -> list[int]:
    fed, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(fed))
        fed.append(out[-1])
    return out


def generate(prompt: list[int], max_tokens: int = 6, **kw) -> api.GenerateRequest:
    return api.GenerateRequest(
        token_ids=api.TokenIds(ids=prompt),
        sampling=api.SamplingParams(max_tokens=max_tokens, **kw),
        tenant="a",
    )


@pytest.fixture
async def deployment():
    async with scheduler_server(core=CoreConfig(max_num_seqs=16)) as (target, front, _):
        worker = LinkWorker(target, fingerprint=FINGERPRINT)
        worker.start()
        await asyncio.wait_for(worker.joined.wait(), 5)
        try:
            yield target, front, worker
        finally:
            await worker.kill()


async def idle(front) -> None:
    """No request left in the scheduler and every block back."""

    def done() -> bool:
        s = front.core.stats()
        return s.running == s.waiting == 0 and all(w.free_blocks == w.num_blocks for w in s.workers)

    await eventually(done, timeout_s=5)


async def test_multiplexed_streams_get_the_tokens_of_their_own_calls(deployment):
    target, front, _ = deployment
    prompts = [[i, 5, 9] for i in range(8)]
    async with AsyncClient(target, multiplex=True) as c:
        results = await asyncio.gather(
            *(c.generate(prompt_token_ids=p, max_tokens=6) for p in prompts)
        )
    for p, r in zip(prompts, results, strict=True):
        assert list(r.token_ids) == expected(p, 6)
        assert r.finish_reason.name == "LENGTH" and r.metrics.prompt_tokens == 3
    await idle(front)


async def test_chunks_ready_together_come_in_one_message(deployment):
    target, front, worker = deployment
    worker.step_delay_s = 0.01  # every stream's chunk of a step is ready before the next step
    async with grpc.aio.insecure_channel(target) as ch:
        call = api_grpc.FastSwitchStub(ch).GenerateMany()
        for tag in range(1, 9):
            await call.write(api.ManyRequest(tag=tag, generate=generate([tag, 7], 5)))
        await call.done_writing()
        tokens: dict[int, list[int]] = {t: [] for t in range(1, 9)}
        finals, messages = set(), 0
        async for msg in call:
            messages += 1
            for tc in msg.chunks:
                assert tc.code == 0
                tokens[tc.tag].extend(tc.chunk.token_ids)
                if tc.chunk.finish_reason:
                    finals.add(tc.tag)
    assert finals == set(tokens) and all(tokens[t] == expected([t, 7], 5) for t in tokens)
    chunks = 8 * 6  # five tokens and a final chunk each, were every chunk its own message
    assert messages < chunks / 2, f"{messages} messages for {chunks} chunks"
    await idle(front)


async def test_a_refused_request_fails_alone_with_its_status(deployment):
    target, front, _ = deployment
    async with grpc.aio.insecure_channel(target) as ch:
        call = api_grpc.FastSwitchStub(ch).GenerateMany()
        await call.write(api.ManyRequest(tag=1, generate=generate([1, 2], max_tokens=0)))
        await call.write(api.ManyRequest(tag=2, generate=generate([3, 4], 3)))
        await call.write(api.ManyRequest(tag=2, generate=generate([5, 6], 3)))  # tag in use
        await call.done_writing()
        got: dict[int, list[api.TaggedChunk]] = {1: [], 2: []}
        async for msg in call:
            for tc in msg.chunks:
                got[tc.tag].append(tc)
    (refused,) = got[1]
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "max_tokens" in refused.message and not refused.HasField("chunk")
    in_use = [tc for tc in got[2] if tc.code]
    assert len(in_use) == 1 and "in use" in in_use[0].message
    ids = [t for tc in got[2] if not tc.code for t in tc.chunk.token_ids]
    assert ids == expected([3, 4], 3)
    await idle(front)


async def test_a_batch_is_its_operations_in_order(deployment):
    target, front, _ = deployment
    long = generate([3, 4], 100, ignore_eos=True)
    batch = [
        api.ManyRequest(tag=1, generate=generate([1, 2], 3)),
        api.ManyRequest(tag=2, generate=long),
        api.ManyRequest(tag=2, cancel=api.ManyRequest.Cancel()),
        api.ManyRequest(tag=3, generate=generate([5], max_tokens=0)),
    ]
    async with grpc.aio.insecure_channel(target) as ch:
        call = api_grpc.FastSwitchStub(ch).GenerateMany()
        await call.write(api.ManyRequest(batch=batch))
        await call.done_writing()
        got: dict[int, list[api.TaggedChunk]] = {1: [], 2: [], 3: []}
        async for msg in call:
            for tc in msg.chunks:
                got[tc.tag].append(tc)
    assert [t for tc in got[1] for t in tc.chunk.token_ids] == expected([1, 2], 3)
    assert got[2] == []  # cancelled as it was read: nothing of it was sent
    (refused,) = got[3]
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    await idle(front)


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (
            api.ManyRequest(
                tag=1,
                generate=generate([1], 2),
                batch=[api.ManyRequest(tag=2, generate=generate([2], 2))],
            ),
            "carries no operation",
        ),
        (
            api.ManyRequest(
                batch=[api.ManyRequest(batch=[api.ManyRequest(tag=1, generate=generate([1], 2))])]
            ),
            "holds no batch",
        ),
    ],
)
async def test_a_malformed_batch_ends_the_call_invalid_argument(deployment, msg, why):
    target, front, _ = deployment
    async with grpc.aio.insecure_channel(target) as ch:
        call = api_grpc.FastSwitchStub(ch).GenerateMany()
        await call.write(msg)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in info.value.details()
    await idle(front)


async def test_many_streams_started_together_get_their_own_tokens(deployment):
    target, front, worker = deployment
    worker.step_delay_s = 0.005
    prompts = [[i, 3] for i in range(40)]  # more than max_num_seqs: some wait their turn
    async with AsyncClient(target, multiplex=True) as c:
        results = await asyncio.gather(
            *(c.generate(prompt_token_ids=p, max_tokens=4, timeout_s=30) for p in prompts)
        )
    assert [list(r.token_ids) for r in results] == [expected(p, 4) for p in prompts]
    await idle(front)


async def test_a_cancelled_tag_stops_at_once_and_frees_its_blocks(deployment):
    target, front, worker = deployment
    worker.step_delay_s = 0.01
    async with AsyncClient(target, multiplex=True) as c:
        long = c.generate_stream(prompt_token_ids=[1, 2, 3], max_tokens=100, ignore_eos=True)
        first = await long.__anext__()
        assert first.token_ids
        await long.aclose()
        with pytest.raises(StopAsyncIteration):
            await long.__anext__()
        short = await c.generate(prompt_token_ids=[4, 5], max_tokens=3)  # the call goes on
        assert list(short.token_ids) == expected([4, 5], 3)
    await idle(front)


async def test_a_deadline_is_per_stream_and_cancels_its_request(deployment):
    target, front, worker = deployment
    worker.step_delay_s = 0.05
    async with AsyncClient(target, multiplex=True) as c:
        with pytest.raises(DeadlineExceeded):
            await c.generate(prompt_token_ids=[1, 2], max_tokens=100, timeout_s=0.3)
        ok = await c.generate(prompt_token_ids=[3, 4], max_tokens=2, timeout_s=10)
        assert list(ok.token_ids) == expected([3, 4], 2)
    await idle(front)


async def test_leaving_the_call_cancels_every_request_on_it(deployment):
    target, front, worker = deployment
    worker.step_delay_s = 0.01
    c = AsyncClient(target, multiplex=True)
    streams = [
        c.generate_stream(prompt_token_ids=[i, 1], max_tokens=100, ignore_eos=True)
        for i in range(4)
    ]
    for s in streams:
        await s.__anext__()
    await eventually(lambda: front.core.stats().running == 4, timeout_s=5)
    await c.close()
    for s in streams:
        with pytest.raises(Cancelled):
            await s.__anext__()
    await idle(front)


async def test_a_scheduler_shutdown_fails_every_open_stream_unavailable():
    async with scheduler_server() as (target, front, _):
        worker = LinkWorker(target, fingerprint=FINGERPRINT)
        worker.step_delay_s = 0.02
        worker.start()
        await asyncio.wait_for(worker.joined.wait(), 5)
        async with AsyncClient(target, multiplex=True) as c:
            streams = [
                c.generate_stream(prompt_token_ids=[i, 2], max_tokens=120, ignore_eos=True)
                for i in range(3)
            ]
            for s in streams:
                await s.__anext__()
            await front.shutdown()
            for s in streams:
                with pytest.raises(Unavailable, match="shutting down"):
                    async for _ in s:
                        pass
        await worker.kill()


async def test_malformed_bytes_end_the_call_invalid_argument(deployment):
    target, _, _ = deployment
    async with grpc.aio.insecure_channel(target) as ch:
        raw = ch.stream_stream(
            "/fastswitch.v1.FastSwitch/GenerateMany",
            request_serializer=lambda b: b,
            response_deserializer=api.ManyResponse.FromString,
        )
        call = raw()
        await call.write(b"\xff\xff\xff")
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "malformed request"
    # and a message naming no operation
    async with AsyncClient(target) as c:
        call = c._api().GenerateMany()
        await call.write(api.ManyRequest(tag=3))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "names no operation" in info.value.details()


async def test_the_client_maps_a_tag_status_to_its_exception(deployment):
    target, front, _ = deployment
    async with AsyncClient(target, multiplex=True) as c:
        with pytest.raises(InvalidArgument, match="max_tokens"):
            await c.generate(prompt_token_ids=[1], max_tokens=10_000)
        assert list((await c.generate(prompt_token_ids=[2], max_tokens=2)).token_ids) == expected(
            [2], 2
        )
    await idle(front)


async def test_at_most_max_open_requests_counting_those_of_a_batch():
    async def open_(request):
        return request

    async def chunks(request):
        await asyncio.sleep(0.01)
        yield api.GenerateChunk(token_ids=[1], finish_reason=api.FINISH_REASON_LENGTH)

    async def close(_):
        pass

    async def requests():
        yield api.ManyRequest(
            batch=[api.ManyRequest(tag=t, generate=generate([t], 1)) for t in (1, 2, 3)]
        )

    rejected = []
    call = ManyCall(
        open=open_,
        chunks=chunks,
        close=close,
        code_of=status_for,
        on_rejected=rejected.append,
        max_open=2,
    )
    got = [tc async for msg in call.run(requests()) for tc in msg.chunks]
    assert sorted((tc.tag, tc.code) for tc in got) == [
        (1, 0),
        (2, 0),
        (3, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
    ]
    assert len(rejected) == 1
