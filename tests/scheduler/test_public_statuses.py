"""How public calls end when something goes wrong, over real gRPC: malformed bytes are
INVALID_ARGUMENT, a bug is ABORTED (never UNKNOWN naming a class), shutdown ends open streams
UNAVAILABLE and a worker's error ABORTED, each with a message; only the client's own cancel is
CANCELLED, and a lost store or worker costs a request nothing."""

from __future__ import annotations

import asyncio
import os
import tempfile

import grpc
import pytest
from polling import eventually
from sched_fakes import LinkWorker
from sched_server import FINGERPRINT, MAX_LEN, scheduler_server

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from proto import worker_pb2 as wk
from scheduler_svc.config import CoreConfig
from scheduler_svc.handlers import INTERNAL, MALFORMED
from scheduler_svc.host_agent import HostAgent
from scheduler_svc.server import max_message_mb

METHODS = {
    "Generate": True,
    "Chat": True,
    "EndConversation": False,
    "Cancel": False,
    "SetPriority": False,
    "GetStats": False,
}


def request(max_tokens: int = 8, **kw) -> api.GenerateRequest:
    return api.GenerateRequest(
        token_ids=api.TokenIds(ids=[1, 2, 3]),
        sampling=api.SamplingParams(max_tokens=max_tokens),
        **kw,
    )


async def raw_call(ch: grpc.aio.Channel, method: str, payload: bytes) -> None:
    """Sends `payload` as the request bytes of `method` and reads the answer to its end."""
    path = f"/fastswitch.v1.FastSwitch/{method}"
    if METHODS[method]:
        async for _ in ch.unary_stream(path)(payload, timeout=10):
            pass
    else:
        await ch.unary_unary(path)(payload, timeout=10)


class FailingWorker(LinkWorker):
    """Reports an error for every sequence it decodes, after `ok_steps` good steps."""

    ok_steps = 2

    def step(self, plan: wk.StepPlan) -> wk.StepResult:
        out = super().step(plan)
        self.ok_steps -= 1
        if self.ok_steps < 0 and plan.decode:
            del out.seqs[:], out.tokens[:]
            out.errors.add(seq=plan.decode[0], message="CUDA error: an illegal memory access")
        return out


async def worker_for(target: str, cls=LinkWorker, delay_s: float = 0.0) -> LinkWorker:
    fake = cls(target, fingerprint=FINGERPRINT, max_model_len=MAX_LEN)
    fake.step_delay_s = delay_s
    fake.start()
    await asyncio.wait_for(fake.joined.wait(), 5)
    return fake


# A string field of each request, as its tag byte (field number << 3 | 2).
STRING_TAG = {"Generate": 0x12, "Chat": 0x12, "EndConversation": 0x12, "Cancel": 0x0A}
STRING_TAG["SetPriority"] = 0x0A


@pytest.mark.parametrize("method", sorted(METHODS))
async def test_malformed_bytes_are_invalid_argument_on_every_method(method):
    payloads = [b"\xff\xff\xff\xff", b"\x0a\x05ab"]  # a truncated varint, a length past the end
    if method in STRING_TAG:
        payloads.append(bytes([STRING_TAG[method], 2, 0xFF, 0xFE]))  # a string, not UTF-8
    async with scheduler_server() as (target, _, _), grpc.aio.insecure_channel(target) as ch:
        for payload in payloads:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw_call(ch, method, payload)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, payload
            assert err.value.details() == MALFORMED
        stats = await api_grpc.FastSwitchStub(ch).GetStats(api.StatsRequest(), timeout=5)
        assert stats.waiting == 0


async def test_a_bug_is_aborted_with_a_message_that_names_no_class(monkeypatch):
    async with scheduler_server() as (target, frontend, _):
        fake = await worker_for(target)

        def broken(*a, **kw):
            raise KeyError("seq 7")

        monkeypatch.setattr(frontend.core, "stats", broken)
        monkeypatch.setattr(frontend, "prepare", broken)
        async with grpc.aio.insecure_channel(target) as ch:
            stub = api_grpc.FastSwitchStub(ch)
            for call in (
                stub.GetStats(api.StatsRequest(), timeout=5),
                _drain(stub.Generate(request(), timeout=5)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.ABORTED
                assert err.value.details() == INTERNAL
                assert "class" not in err.value.details() and "KeyError" not in err.value.details()
            monkeypatch.undo()
            tokens = await _drain(stub.Generate(request(), timeout=5))
            assert len(tokens) == 8
        await fake.kill()


async def _drain(call) -> list[int]:
    tokens: list[int] = []
    async for chunk in call:
        tokens.extend(chunk.token_ids)
    return tokens


async def test_shutdown_ends_open_streams_unavailable_with_a_message():
    async with scheduler_server() as (target, frontend, _):
        fake = await worker_for(target, delay_s=0.01)
        async with grpc.aio.insecure_channel(target) as ch:
            stub = api_grpc.FastSwitchStub(ch)
            generate = stub.Generate(request(max_tokens=100), timeout=10)
            chat = stub.Chat(
                api.ChatRequest(message="hi", sampling=api.SamplingParams(max_tokens=100)),
                timeout=10,
            )
            calls = (generate, chat)
            got: list[list[int]] = [[], []]
            for i, call in enumerate(calls):
                chunk = await call.read()
                got[i].extend(chunk.token_ids)
            await frontend.shutdown()
            for i, call in enumerate(calls):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await _drain_into(call, got[i])
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert err.value.details() == "the scheduler is shutting down"
                assert got[i], "the tokens before the shutdown were streamed"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _drain(stub.Generate(request(), timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            stats = await stub.GetStats(api.StatsRequest(), timeout=5)
            assert (stats.failed, stats.cancelled) == (2, 0)
        await fake.kill()


async def _drain_into(call, tokens: list[int]) -> None:
    """Reads `call` to its end (with read(): a call may have been read from already)."""
    while (chunk := await call.read()) is not grpc.aio.EOF:
        assert chunk.finish_reason == api.FINISH_REASON_UNSPECIFIED
        tokens.extend(chunk.token_ids)
    await call  # raises the call's error status


async def test_a_worker_error_ends_the_stream_aborted_with_its_message():
    async with scheduler_server() as (target, frontend, _):
        fake = await worker_for(target, cls=FailingWorker)
        async with grpc.aio.insecure_channel(target) as ch:
            stub = api_grpc.FastSwitchStub(ch)
            tokens: list[int] = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _drain_into(stub.Generate(request(max_tokens=50), timeout=10), tokens)
            assert err.value.code() == grpc.StatusCode.ABORTED
            assert err.value.details() == (
                "worker w0 failed on this request: CUDA error: an illegal memory access"
            )
            assert tokens, "the tokens before the failure were streamed"
            slot = frontend.core.workers["w0"]
            await eventually(
                lambda: slot.allocator.num_free == slot.info.num_blocks,
                what="the failed request's blocks freed",
            )
        await fake.kill()


async def test_the_client_s_own_cancel_stays_cancelled():
    async with scheduler_server() as (target, frontend, _):
        fake = await worker_for(target, delay_s=0.01)
        async with grpc.aio.insecure_channel(target) as ch:
            stub = api_grpc.FastSwitchStub(ch)
            call = stub.Generate(request(max_tokens=100), timeout=10)
            await call.read()
            call.cancel()
            assert await call.code() == grpc.StatusCode.CANCELLED
            await eventually(lambda: frontend.core.counters.cancelled == 1, what="the cancel")
            assert frontend.core.counters.failed == 0
        await fake.kill()


async def test_a_dead_store_costs_a_retained_request_nothing():
    """Retention on, the KV store gone (nothing listens on its socket): the reserve for the
    offload fails, the request still ends normally and its device blocks come back."""
    with tempfile.TemporaryDirectory() as tmp:
        dead = f"unix://{os.path.join(tmp, 'kvstore.sock')}"
        config = CoreConfig(preemption="swap", retain=True)
        async with scheduler_server(core=config) as (target, frontend, _):
            agent = HostAgent(frontend.core, dead, changed=frontend.notify, timeout_s=5.0)
            frontend.on_host_ops = agent.wake
            task = asyncio.create_task(agent.run())
            fake = await worker_for(target)
            try:
                async with grpc.aio.insecure_channel(target) as ch:
                    stub = api_grpc.FastSwitchStub(ch)
                    for _ in range(2):
                        last = None
                        async for chunk in stub.Generate(
                            request(max_tokens=12, retain_ttl_s=60.0), timeout=10
                        ):
                            last = chunk
                        assert last is not None
                        assert last.finish_reason == api.FINISH_REASON_LENGTH
                slot = frontend.core.workers["w0"]
                await eventually(
                    lambda: slot.allocator.num_free == slot.info.num_blocks,
                    what="the blocks of the offload that could not start are freed",
                )
            finally:
                await fake.kill()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def test_the_message_bound_leaves_room_for_the_largest_valid_request():
    assert max_message_mb(256 * 16, 256) == 4  # the floor
    mb = max_message_mb(131_072 * 16, 131_072)  # a 128K context: 2 MiB texts
    assert (mb - 1) << 20 >= 2 * (131_072 * 16) + 10 * 131_072


async def test_a_message_over_the_bound_is_refused_before_it_is_parsed():
    async with scheduler_server(max_message_mb=4) as (target, _, _):
        fake = await worker_for(target)
        opts = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(target, options=opts) as ch:
            stub = api_grpc.FastSwitchStub(ch)
            big = api.GenerateRequest(
                text="x" * (5 << 20), sampling=api.SamplingParams(max_tokens=4)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _drain(stub.Generate(big, timeout=10))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(await _drain(stub.Generate(request(), timeout=10))) == 8
        await fake.kill()
