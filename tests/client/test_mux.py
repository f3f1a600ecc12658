"""client/mux.py against a scripted GenerateMany call (no server): what is written -- several
requests queued at once in one message --, per-stream deadlines from one timer, and reads that
a cancel, a deadline or the client's close wake up."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from client.errors import Cancelled, DeadlineExceeded, Unavailable
from client.mux import Multiplexer, MuxStream
from proto import scheduler_pb2 as pb


class ScriptedCall:
    """A GenerateMany call: records each written message; `send` scripts what the reader
    gets; `fail` ends it with a status."""

    def __init__(self) -> None:
        self.written: list[pb.ManyRequest] = []
        self._incoming: asyncio.Queue[pb.ManyResponse | grpc.aio.AioRpcError] = asyncio.Queue()
        self.cancelled = False

    async def write(self, msg: pb.ManyRequest) -> None:
        self.written.append(msg)
        await asyncio.sleep(0)  # a write yields to the loop, as grpc's does

    async def read(self) -> pb.ManyResponse:
        item = await self._incoming.get()
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, *chunks: pb.TaggedChunk) -> None:
        self._incoming.put_nowait(pb.ManyResponse(chunks=chunks))

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
        self._incoming.put_nowait(err)

    def ops(self) -> list[tuple[int, str]]:
        """Every operation written, batches flattened: (tag, op)."""
        flat = [op for m in self.written for op in (m.batch or [m])]
        return [(op.tag, op.WhichOneof("op") or "") for op in flat]


def chunk(tag: int, token: int, final: bool = False) -> pb.TaggedChunk:
    reason = pb.FINISH_REASON_LENGTH if final else pb.FINISH_REASON_UNSPECIFIED
    return pb.TaggedChunk(tag=tag, chunk=pb.GenerateChunk(token_ids=[token], finish_reason=reason))


def request(n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=n))


@pytest.fixture
async def mux():
    calls: list[ScriptedCall] = []

    def start() -> ScriptedCall:
        calls.append(ScriptedCall())
        return calls[-1]

    m = Multiplexer(start)
    m.calls = calls  # type: ignore[attr-defined]
    yield m
    await m.aclose()


async def first_reads(streams: list[MuxStream]) -> list[asyncio.Task]:
    """Each stream's first read started (so its request is queued); the tasks."""
    tasks = [asyncio.create_task(s.read_message()) for s in streams]
    await asyncio.sleep(0)
    return tasks


async def test_requests_queued_at_once_go_in_one_message_in_order(mux):
    streams = [MuxStream(mux, request(i + 1), None) for i in range(8)]
    tasks = await first_reads(streams)
    await asyncio.sleep(0.01)
    (call,) = mux.calls
    assert len(call.written) == 1 and len(call.written[0].batch) == 8
    assert call.ops() == [(t, "generate") for t in range(1, 9)]
    assert [op.generate.sampling.max_tokens for op in call.written[0].batch] == list(range(1, 9))
    call.send(*(chunk(t, 100 + t, final=True) for t in range(1, 9)))
    got = await asyncio.gather(*tasks)
    assert [list(m.token_ids) for m in got] == [[100 + t] for t in range(1, 9)]
    # one request alone goes as itself, not as a batch of one
    tasks = await first_reads([MuxStream(mux, request(1), None)])
    await asyncio.sleep(0.01)
    assert call.written[-1].tag == 9 and not call.written[-1].batch
    tasks[0].cancel()


async def test_a_deadline_fails_a_waiting_read_and_cancels_its_tag(mux):
    slow, other = MuxStream(mux, request(5), 0.05), MuxStream(mux, request(5), None)
    slow_read, other_read = await first_reads([slow, other])
    (call,) = mux.calls
    call.send(chunk(2, 7))
    assert list((await other_read).token_ids) == [7]
    with pytest.raises(DeadlineExceeded):
        await slow_read
    await asyncio.sleep(0.01)
    assert call.ops()[-1] == (1, "cancel")
    with pytest.raises(StopAsyncIteration):  # closed: later reads end
        await slow.__anext__()


async def test_chunks_delivered_before_the_deadline_are_still_read(mux):
    s = MuxStream(mux, request(3), 0.05)
    (read,) = await first_reads([s])
    (call,) = mux.calls
    call.send(chunk(1, 1))
    assert list((await read).token_ids) == [1]
    call.send(chunk(1, 2))
    await asyncio.sleep(0.1)  # past the deadline, unread
    assert list((await s.read_message()).token_ids) == [2]
    with pytest.raises(DeadlineExceeded):
        await s.read_message()


async def test_a_stream_that_finished_leaves_no_deadline_behind(mux):
    s = MuxStream(mux, request(1), 0.05)
    (read,) = await first_reads([s])
    (call,) = mux.calls
    call.send(chunk(1, 1, final=True))
    assert (await read).finish_reason == pb.FINISH_REASON_LENGTH
    await asyncio.sleep(0.1)
    assert call.ops() == [(1, "generate")]  # no cancel at the deadline
    assert await s.read_message() is None


async def test_cancel_from_another_task_wakes_a_waiting_read(mux):
    s = MuxStream(mux, request(5), None)
    (read,) = await first_reads([s])
    s.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(read, 1)
    await asyncio.sleep(0.01)
    assert mux.calls[0].ops() == [(1, "generate"), (1, "cancel")]


async def test_cancelling_the_reading_task_cancels_the_request(mux):
    s = MuxStream(mux, request(5), None)
    (read,) = await first_reads([s])
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    await asyncio.sleep(0.01)
    assert mux.calls[0].ops()[-1] == (1, "cancel")


async def test_closing_the_client_fails_every_stream_at_once(mux):
    streams = [MuxStream(mux, request(5), 10) for _ in range(3)]
    tasks = await first_reads(streams)
    (call,) = mux.calls
    call.send(*(chunk(t, t) for t in (1, 2, 3)), chunk(1, 9))
    await asyncio.gather(*tasks)
    await mux.aclose()  # tag 1 still has a chunk not read: it is dropped
    assert call.cancelled
    for s in streams:
        with pytest.raises(Cancelled, match="closed"):
            await s.read_message()


async def test_a_failed_call_fails_its_streams_after_what_they_got(mux):
    streams = [MuxStream(mux, request(5), None) for _ in range(2)]
    tasks = await first_reads(streams)
    (call,) = mux.calls
    call.send(chunk(1, 1), chunk(2, 2), chunk(1, 3))
    call.fail(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down")
    await asyncio.gather(*tasks)
    assert list((await streams[0].read_message()).token_ids) == [3]
    for s in streams:
        with pytest.raises(Unavailable, match="shutting down"):
            await s.read_message()
    # the next stream opens a new call
    (read,) = await first_reads([MuxStream(mux, request(1), None)])
    assert len(mux.calls) == 2
    mux.calls[1].send(chunk(3, 5, final=True))
    assert list((await read).token_ids) == [5]


async def test_a_tag_status_fails_its_stream_alone(mux):
    bad, good = MuxStream(mux, request(5), None), MuxStream(mux, request(1), None)
    bad_read, good_read = await first_reads([bad, good])
    code = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    mux.calls[0].send(pb.TaggedChunk(tag=1, code=code, message="at most 1 open"), chunk(2, 4, True))
    with pytest.raises(Exception, match="at most 1 open") as info:
        await bad_read
    assert type(info.value).__name__ == "ResourceExhausted"
    assert list((await good_read).token_ids) == [4]
