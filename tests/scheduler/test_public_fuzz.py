"""A fuzz test of the public API against a real scheduler (servicers, handlers, frontend, core)
and a fake worker over the real StepLink stream: hypothesis draws every field of every public
message (and raw random bytes for every method); each call must end OK or with a status of the
documented set, the scheduler's state must stay consistent, and a normal request must still
succeed after.

The scheduler runs on its own event loop in a thread owned by the module's fixture (stopped and
joined at the end), so the property test itself is plain synchronous code on a sync channel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sched_fakes import LinkWorker
from sched_server import FINGERPRINT, MAX_LEN, scheduler_server

from proto import scheduler_pb2 as api
from proto import scheduler_pb2_grpc as api_grpc
from scheduler_svc.frontend import Frontend
from servekit.validation import MAX_REQUEST_ID_CHARS

# The documented set (proto/scheduler.proto). CANCELLED is absent: these calls never cancel.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
TIMEOUT_S = 20.0
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class SchedulerThread:
    """A scheduler with one fake worker, served on a loop of its own in a thread."""

    def __init__(self) -> None:
        self.target = ""
        self.frontend: Frontend | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-scheduler")

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(20), "the scheduler did not start"
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by start() or stop()
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        async with scheduler_server(max_prompt_bytes=4096) as (target, frontend, _):
            worker = LinkWorker(target, fingerprint=FINGERPRINT, max_model_len=MAX_LEN)
            worker.start()
            await asyncio.wait_for(worker.joined.wait(), 10)
            self.target, self.frontend = target, frontend
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await worker.kill()

    def check_integrity(self) -> None:
        """The core's own consistency check, run on the scheduler's loop."""

        async def check() -> None:
            assert self.frontend is not None
            self.frontend.core.check_integrity()

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(check(), self._loop).result(10)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the scheduler thread did not stop"
        if self._error is not None:
            raise self._error


@pytest.fixture(scope="module")
def scheduler() -> Iterator[SchedulerThread]:
    server = SchedulerThread()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stub(scheduler) -> Iterator[api_grpc.FastSwitchStub]:
    with grpc.insecure_channel(scheduler.target) as channel:
        yield api_grpc.FastSwitchStub(channel)


@pytest.fixture(scope="module")
def channel(scheduler) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(scheduler.target) as ch:
        yield ch


# ------------------------------------------------------------------------------ strategies
# Each field is drawn valid most of the time and wild (any value of its type, or just past a
# bound) otherwise, so that a good share of requests get past validation and run.

int32 = st.integers(-(2**31), 2**31 - 1)
float32 = st.floats(width=32)  # NaN and infinities included
SEEN = "use-a-seen-conversation"  # replaced by the id of a conversation an earlier chat opened
seen_conversations: list[str] = []


def field(draw, valid, wild):
    """`valid` seven times in eight, else `wild`."""
    return draw(wild) if draw(st.integers(0, 7)) == 0 else draw(valid)


names = st.one_of(
    st.sampled_from(["x" * 64, "x" * 65, "a b", "ünï"]),
    st.text(max_size=80),
    st.text(alphabet="abc-_.:@", min_size=1, max_size=70),
)
ids = st.one_of(
    st.sampled_from(["z" * 128, "z" * 129, "r 1"]),
    st.text(max_size=160),
    st.text(alphabet="abc0-_.:@/+=~", min_size=1, max_size=140),
)
wild_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "€", "😀"]), st.integers(0, 6000)),
)
good_text = st.text(min_size=1, max_size=30)


@st.composite
def sampling(draw) -> api.SamplingParams:
    out = api.SamplingParams(
        temperature=field(draw, st.floats(0, 2, width=32), float32),
        top_p=field(draw, st.one_of(st.just(0.0), st.floats(0.0625, 1, width=32)), float32),
        top_k=field(draw, st.integers(0, 50), int32),
        max_tokens=field(draw, st.integers(1, 16), st.one_of(st.integers(-2, 140), int32)),
        stop_token_ids=field(
            draw,
            st.lists(st.integers(0, 261), max_size=3),
            st.lists(st.one_of(st.integers(-1, 270), int32), max_size=300),
        ),
        ignore_eos=draw(st.booleans()),
        stop=field(
            draw,
            st.lists(st.text(min_size=1, max_size=4), max_size=2),
            st.lists(st.text(max_size=300), max_size=20),
        ),
    )
    seed = draw(st.one_of(st.none(), st.integers(0, 2**64 - 1)))
    if seed is not None:
        out.seed = seed
    return out


@st.composite
def generate_requests(draw) -> api.GenerateRequest:
    out = api.GenerateRequest(
        request_id=field(draw, st.just(""), ids),
        sampling=draw(sampling()),
        tenant=field(draw, st.sampled_from(["", "a", "b"]), names),
        priority=draw(int32),
    )
    prompt = field(draw, st.sampled_from(["text", "ids"]), st.just("none"))
    if prompt == "text":
        out.text = field(draw, good_text, wild_text)
    elif prompt == "ids":
        out.token_ids.ids.extend(
            field(
                draw,
                st.lists(st.integers(0, 261), min_size=1, max_size=40),
                st.lists(st.one_of(st.integers(0, 270), int32), max_size=300),
            )
        )
    ttl = field(draw, st.one_of(st.none(), st.floats(0, 100)), st.floats())
    if ttl is not None:
        out.retain_ttl_s = ttl
    return out


@st.composite
def chat_requests(draw) -> api.ChatRequest:
    return api.ChatRequest(
        conversation_id=field(draw, st.sampled_from(["", SEEN]), ids),
        tenant=field(draw, st.sampled_from(["", "a"]), names),
        system=field(draw, st.one_of(st.just(""), good_text), wild_text),
        message=field(draw, good_text, wild_text),
        sampling=draw(sampling()),
        priority=draw(int32),
        request_id=field(draw, st.just(""), ids),
        ttl_s=field(draw, st.one_of(st.just(0.0), st.floats(0, 100)), st.floats()),
    )


# ------------------------------------------------------------------------------- the calls


def code_of(call) -> grpc.StatusCode:
    """Runs `call`; its status code (OK when it returns)."""
    try:
        call()
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        details = err.details() or ""
        assert len(details) < 300, f"a long message: {details[:80]!r}..."
        assert "<class" not in details and "Traceback" not in details, details
        event(err.code().name)  # --hypothesis-show-statistics: how the calls ended
        return err.code()
    event("OK")
    return grpc.StatusCode.OK


def stream(call) -> None:
    for chunk in call:
        assert len(chunk.request_id) <= MAX_REQUEST_ID_CHARS
        if chunk.conversation_id and chunk.conversation_id not in seen_conversations:
            seen_conversations.append(chunk.conversation_id)


def assert_still_serving(scheduler: SchedulerThread, stub: api_grpc.FastSwitchStub) -> None:
    scheduler.check_integrity()
    request = api.GenerateRequest(
        token_ids=api.TokenIds(ids=[1, 2, 3]),
        sampling=api.SamplingParams(max_tokens=4),
        tenant="after",
    )
    chunks = list(stub.Generate(request, timeout=TIMEOUT_S))
    assert sum(len(c.token_ids) for c in chunks) == 4
    assert chunks[-1].finish_reason == api.FINISH_REASON_LENGTH


@FUZZ
@given(req=generate_requests())
def test_generate_fuzz(scheduler, stub, req):
    assert code_of(lambda: stream(stub.Generate(req, timeout=TIMEOUT_S))) in ALLOWED


@FUZZ
@given(req=chat_requests(), which=st.integers(0, 1000))
def test_chat_fuzz(scheduler, stub, req, which):
    if req.conversation_id == SEEN:
        seen = seen_conversations
        req.conversation_id = seen[which % len(seen)] if seen else ""
    assert code_of(lambda: stream(stub.Chat(req, timeout=TIMEOUT_S))) in ALLOWED


@FUZZ
@given(
    cancel=st.builds(api.CancelRequest, request_id=ids),
    priority=st.builds(api.SetPriorityRequest, request_id=ids, priority=int32),
    end=st.builds(api.EndConversationRequest, conversation_id=ids, tenant=names),
)
def test_small_calls_fuzz(scheduler, stub, cancel, priority, end):
    assert code_of(lambda: stub.Cancel(cancel, timeout=TIMEOUT_S)) in ALLOWED
    assert code_of(lambda: stub.SetPriority(priority, timeout=TIMEOUT_S)) in ALLOWED
    assert code_of(lambda: stub.EndConversation(end, timeout=TIMEOUT_S)) in ALLOWED
    assert code_of(lambda: stub.GetStats(api.StatsRequest(), timeout=TIMEOUT_S)) == (
        grpc.StatusCode.OK
    )


@st.composite
def many_requests(draw) -> api.ManyRequest:
    op = draw(st.sampled_from(["generate", "cancel", "none"]))
    out = api.ManyRequest(tag=draw(st.integers(0, 5) | st.integers(0, 2**64 - 1)))
    if op == "generate":
        out.generate.CopyFrom(draw(generate_requests()))
    elif op == "cancel":
        out.cancel.SetInParent()
    return out


ALLOWED_VALUES = {code.value[0] for code in ALLOWED}


def many(call) -> None:
    for msg in call:
        for tagged in msg.chunks:
            assert tagged.code in ALLOWED_VALUES and len(tagged.message) < 300, tagged.message
            assert len(tagged.chunk.request_id) <= MAX_REQUEST_ID_CHARS


@FUZZ
@given(reqs=st.lists(many_requests(), max_size=8))
def test_generate_many_fuzz(scheduler, stub, reqs):
    assert code_of(lambda: many(stub.GenerateMany(iter(reqs), timeout=TIMEOUT_S))) in ALLOWED


STREAMING = {"Generate": True, "Chat": True}


@FUZZ
@given(
    method=st.sampled_from(
        ["Generate", "Chat", "EndConversation", "Cancel", "SetPriority", "GetStats"]
    ),
    payload=st.one_of(
        st.binary(max_size=300),
        generate_requests().map(lambda m: m.SerializeToString()[:-1]),  # cut short
        chat_requests().map(lambda m: m.SerializeToString() + b"\xff"),  # a stray byte after
    ),
)
def test_raw_bytes_fuzz(scheduler, channel, method, payload):
    path = f"/fastswitch.v1.FastSwitch/{method}"
    if STREAMING.get(method):
        code = code_of(lambda: stream(channel.unary_stream(path)(payload, timeout=TIMEOUT_S)))
    else:
        code = code_of(lambda: channel.unary_unary(path)(payload, timeout=TIMEOUT_S))
    assert code in ALLOWED


@FUZZ
@given(
    payloads=st.lists(
        st.one_of(
            st.binary(max_size=300),
            many_requests().map(lambda m: m.SerializeToString()),
            many_requests().map(lambda m: m.SerializeToString()[:-1]),
        ),
        max_size=6,
    )
)
def test_raw_bytes_generate_many_fuzz(scheduler, channel, payloads):
    call = channel.stream_stream(
        "/fastswitch.v1.FastSwitch/GenerateMany",
        response_deserializer=api.ManyResponse.FromString,
    )
    assert code_of(lambda: many(call(iter(payloads), timeout=TIMEOUT_S))) in ALLOWED


def test_the_scheduler_serves_normally_after_the_fuzz(scheduler, stub):
    """Runs after the fuzz tests of this module (pytest keeps the file's order)."""
    assert_still_serving(scheduler, stub)
    stats = stub.GetStats(api.StatsRequest(), timeout=TIMEOUT_S)
    assert stats.waiting == 0 and stats.running == 0
    assert stats.failed == 0  # no request ended through a fault
