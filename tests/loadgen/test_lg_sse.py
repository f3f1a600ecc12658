"""The HTTP door's side of the load generator without a deployment: the SSE parser, the event
decoder, and the HTTP transport against a byte-level mock door on loopback (``mock_door.py``:
what it sends, how it reads a stream split anywhere, and each way a request fails)."""

from __future__ import annotations

import json

import pytest
from mock_door import MockDoor, split

from client import SamplingOptions
from client.loadgen.http_transport import HttpTransport
from client.loadgen.runner import RunConfig, Runner
from client.loadgen.sse import BAD_STREAM, STREAM_ERROR, SseParser, decode_event
from client.loadgen.stats import ServerUsage
from client.loadgen.transport import Piece, RequestFailed, TargetError
from client.loadgen.workloads import WorkloadSpec, build_workload
from fastswitch.bench import main
from fastswitch.deploy import free_port


def chunk(ids: list[int], usage: dict | None = None, *, choices: bool = True) -> bytes:
    obj: dict = {"id": "cmpl-1", "object": "text_completion", "model": "tiny"}
    obj["choices"] = [{"index": 0, "text": "x", "token_ids": ids}] if choices else []
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


USAGE = {"prompt_tokens": 3, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 1}}
STREAM = chunk([7]) + chunk([8, 9]) + chunk([]) + chunk([], USAGE, choices=False)
STREAM += b"data: [DONE]\n\n"


# ---------------------------------------------------------------------- the parser


def test_events_split_at_every_byte_come_out_whole_and_in_order():
    whole = SseParser().feed(STREAM)
    parser = SseParser()
    split = [e for k in range(len(STREAM)) for e in parser.feed(STREAM[k : k + 1])]
    assert split == whole and len(whole) == 5 and whole[-1] == "[DONE]"
    assert not parser.pending


def test_crlf_multiline_data_comments_and_other_fields():
    raw = b': keep-alive\r\nevent: x\r\nid: 3\r\ndata: {"a":\r\ndata:1}\r\n\r\ndata: [DONE]\n\n'
    assert SseParser().feed(raw) == ['{"a":\n1}', "[DONE]"]


def test_an_event_without_its_blank_line_is_not_returned():
    parser = SseParser()
    assert parser.feed(b"data: [DONE]\n") == [] and parser.pending
    assert parser.feed(b"\n") == ["[DONE]"]


def test_a_multibyte_character_split_across_reads():
    raw = 'data: {"t":"é"}\n\n'.encode()
    cut = raw.index("é".encode()) + 1
    parser = SseParser()
    assert parser.feed(raw[:cut]) == [] and parser.feed(raw[cut:]) == ['{"t":"é"}']


def test_decode_chunks_usage_done():
    events = SseParser().feed(STREAM)
    assert [decode_event(e) for e in events] == [
        Piece((7,)),
        Piece((8, 9)),
        Piece(()),
        Piece((), usage=ServerUsage(3, 1)),
        None,
    ]
    no_details = decode_event(json.dumps({"choices": [], "usage": {"prompt_tokens": 5}}))
    assert no_details == Piece((), usage=ServerUsage(5, None))  # unknown stays unknown


def test_decode_an_error_event_raises_the_door_message():
    with pytest.raises(RequestFailed) as info:
        decode_event(json.dumps({"error": {"message": "the request was aborted", "code": "x"}}))
    assert info.value.code == STREAM_ERROR and info.value.details == "the request was aborted"


@pytest.mark.parametrize(
    ("data", "what"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"choices": [{"text": "a"}]}), "without token_ids"),
    ],
)
def test_decode_what_the_door_does_not_send(data, what):
    with pytest.raises(RequestFailed, match=what) as info:
        decode_event(data)
    assert info.value.code == BAD_STREAM


# ---------------------------------------------------------------------- the transport


async def collect(door: MockDoor) -> list[Piece]:
    async with HttpTransport(door.url, timeout_s=5) as t:
        stream = t.stream(
            [1, 2, 3],
            options=SamplingOptions(max_tokens=3, ignore_eos=True),
            tenant="alice",
            priority=2,
            request_id="lg-1",
            timeout_s=5,
        )
        return [p async for p in stream]


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
async def test_the_transport_sends_openai_completions_and_reads_any_split(size):
    async with MockDoor(split(STREAM, size)) as door:
        got = await collect(door)
    assert [p.token_ids for p in got] == [(7,), (8, 9), (), ()]
    assert got[-1].usage == ServerUsage(3, 1) and all(p.metrics is None for p in got)
    (body,) = door.seen
    assert body == {
        "model": "tiny",
        "prompt": [1, 2, 3],
        "max_tokens": 3,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "user": "alice",
        "priority": 2,
    }


async def test_streams_after_the_first_reuse_its_connection():
    async with MockDoor([STREAM]) as door, HttpTransport(door.url, timeout_s=5) as t:
        for k in range(3):
            stream = t.stream(
                [1],
                options=SamplingOptions(max_tokens=3),
                tenant="a",
                priority=0,
                request_id=f"r{k}",
                timeout_s=5,
            )
            got = [p.token_ids async for p in stream]
            assert got == [(7,), (8, 9), (), ()]
    # GET /v1/models for the model's name, then three streams: one keep-alive connection
    assert door.connections == 1 and len(door.seen) == 3


async def test_a_stream_without_done_fails():
    async with MockDoor([STREAM.replace(b"data: [DONE]\n\n", b"")]) as door:
        with pytest.raises(RequestFailed, match=r"ended without data: \[DONE\]") as info:
            await collect(door)
    assert info.value.code == "HTTP_INCOMPLETE"


async def test_a_stream_cut_mid_answer_is_unavailable():
    async with MockDoor(split(STREAM, 40), cut_after_pieces=2) as door:
        with pytest.raises(RequestFailed, match="closed the connection mid-answer") as info:
            await collect(door)
    assert info.value.code == "UNAVAILABLE"


async def test_an_error_event_after_tokens_fails_with_its_message():
    bad = chunk([7]) + b'data: {"error": {"message": "aborted by the server"}}\n\ndata: [DONE]\n\n'
    async with MockDoor([bad]) as door:
        with pytest.raises(RequestFailed) as info:
            await collect(door)
    assert (info.value.code, info.value.details) == (STREAM_ERROR, "aborted by the server")


async def test_a_non_200_answer_fails_with_the_door_message():
    body = json.dumps({"error": {"message": "max_tokens must be <= 4096, got 5000"}}).encode()
    async with MockDoor([body], status=400) as door:
        with pytest.raises(RequestFailed) as info:
            await collect(door)
    assert info.value.code == "HTTP_400"
    assert info.value.details == "max_tokens must be <= 4096, got 5000"


async def test_the_health_and_model_probes():
    async with MockDoor([STREAM]) as door, HttpTransport(door.url, timeout_s=5) as t:
        await t.check(timeout_s=1)
        assert await t.max_model_len(timeout_s=1) == 2048 and await t.workers(timeout_s=1) == 2
        assert t.stats_note is not None and "--stats-target" in t.stats_note
        with pytest.raises(RequestFailed, match="--stats-target"):
            await t.stats(timeout_s=1)


async def test_a_door_that_is_not_ready_is_a_target_error():
    unready = (503, {"status": "no_workers", "workers": 0})
    async with MockDoor(health=unready) as door, HttpTransport(door.url, timeout_s=5) as t:
        with pytest.raises(TargetError, match="not ready: GET /health answered 503"):
            await t.check(timeout_s=1)
        assert await t.workers(timeout_s=1) == 0


async def test_a_door_that_does_not_answer():
    url = f"http://127.0.0.1:{free_port()}"
    async with HttpTransport(url, timeout_s=5) as t:
        with pytest.raises(TargetError, match=f"no FastSwitch HTTP door answers at {url}"):
            await t.check(timeout_s=1)
        with pytest.raises(RequestFailed) as info:
            async for _ in t.stream(
                [1],
                options=SamplingOptions(max_tokens=1),
                tenant="a",
                priority=0,
                request_id="r",
                timeout_s=2,
            ):
                pass
        assert info.value.code == "UNAVAILABLE"


# ---------------------------------------------------------------------- the run's config


def test_http_targets_have_no_chat_and_grpc_ones_no_stats_target():
    with pytest.raises(ValueError, match="Chat API is gRPC only"):
        RunConfig("http://127.0.0.1:8000", use_chat=True)
    with pytest.raises(ValueError, match="for an http:// target"):
        RunConfig("127.0.0.1:50051", stats_target="127.0.0.1:50052")
    RunConfig("http://127.0.0.1:8000", stats_target="127.0.0.1:50051", model_name="tiny")


async def test_a_runner_against_a_door_that_does_not_answer():
    cfg = RunConfig(f"http://127.0.0.1:{free_port()}", connect_timeout_s=1.0)
    w = build_workload(WorkloadSpec("fairness", duration_s=0.2, rate=10.0))
    with pytest.raises(TargetError, match="no FastSwitch HTTP door answers at http://127"):
        await Runner(w, cfg).run()


def test_the_cli_refuses_chat_over_http(capsys):
    rc = main(
        [
            "--target",
            "http://127.0.0.1:1",
            "--workload",
            "multiturn",
            "--use-chat",
            "--max-model-len",
            "2048",
            "--no-progress",
        ]
    )
    assert rc == 2 and "Chat API is gRPC only" in capsys.readouterr().err
