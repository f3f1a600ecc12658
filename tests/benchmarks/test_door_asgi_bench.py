"""benchmarks/door_asgi.py drives the door's real streaming path: its scripted requests get the
whole SSE answer a client would (the text of every scripted message, the finish, [DONE])."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from door_asgi import body, one, scripted_app
from starlette.types import Message


@pytest.mark.parametrize("chat", [False, True])
async def test_a_scripted_request_streams_every_message_then_done(chat):
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    path, data = body(chat, 5)
    await one(scripted_app(5), path, data, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    stream = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert stream.endswith("data: [DONE]\n\n") and sent[-1]["more_body"] is False
    chunks = [json.loads(e[6:]) for e in stream.split("\n\n") if e and e != "data: [DONE]"]
    choices = [c["choices"][0] for c in chunks]
    texts = [ch["delta"].get("content", "") if chat else ch["text"] for ch in choices]
    assert "".join(texts) == "".join(f" w{i}" for i in range(5))
    assert choices[-1]["finish_reason"] == "length"
