"""The two generation routes, ``POST /v1/completions`` and ``POST /v1/chat/completions``, as
plain ASGI: the body validated in one pydantic call, the scheduler's stream read message by
message and written as SSE bytes.

They carry nearly all of the door's load -- a write per streamed token of every stream -- so they
are not FastAPI routes. A FastAPI route passes every ``send`` of a stream through three wrappers
of its middleware stack and builds a ``Request``, its dependencies, an SDK chunk object per
token and a task pair per answer; here a token costs one gRPC read, the bytes of its event
(:class:`~api_svc.answers.Shape`) and one ``send``. The rest of the API (models, health,
metrics) stays on FastAPI (:mod:`api_svc.app`).

A client that leaves is seen by one watcher task per request reading ``receive`` (uvicorn says
``http.disconnect`` only there): it cancels the scheduler call, which frees the request's blocks
and ends the read waiting on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Send

from api_svc.answers import Shape
from api_svc.door import Door, Prepared, Usage, finish_reason
from api_svc.errors import ApiError, from_sdk
from api_svc.metrics import ApiMetrics
from api_svc.protocol import ChatCompletionRequest, CompletionRequest
from api_svc.sse import DONE, event
from client.errors import FastSwitchError
from client.stream import GenerationStream
from proto import scheduler_pb2 as pb

log = logging.getLogger(__name__)

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
ROUTES = (COMPLETIONS, CHAT)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Generation:
    """Answers the generation routes through a :class:`~api_svc.door.Door`."""

    def __init__(self, door: Door, metrics: ApiMetrics) -> None:
        self.door = door
        self.metrics = metrics

    async def __call__(
        self, path: str, body: bytes, key_tenant: str | None, receive: Receive, send: Send
    ) -> int:
        """Answers one request whose body the caller has read (``receive`` now only says when
        the client leaves); returns the HTTP status. Raises ApiError before the answer began
        (the caller sends it)."""
        req: CompletionRequest | ChatCompletionRequest
        try:
            if path == CHAT:
                req = _parse(ChatCompletionRequest, body)
                prepared = self.door.chat(req, key_tenant)
            else:
                req = _parse(CompletionRequest, body)
                prepared = self.door.completion(req, key_tenant)
            shape = Shape(
                id=f"{'chatcmpl' if path == CHAT else 'cmpl'}-{prepared.request_id}",
                created=int(time.time()),
                model=req.model,
                chat=path == CHAT,
                token_ids=req.return_token_ids,
                include_usage=req.include_usage,
                continuous_usage=req.continuous_usage,
            )
            gen = self.door.open(prepared)
        except ApiError:
            raise
        except Exception as err:
            raise _internal(err) from None
        usage = Usage(prompt_tokens=len(prepared.prompt_ids))
        watch = _Watch(receive, gen, self.metrics)
        try:
            async with gen:
                return await self._answer(req.stream, prepared, shape, gen, usage, watch, send)
        finally:
            watch.stop()

    async def _answer(
        self,
        stream: bool,
        p: Prepared,
        shape: Shape,
        gen: GenerationStream,
        usage: Usage,
        watch: _Watch,
        send: Send,
    ) -> int:
        headers = [(b"x-request-id", p.request_id.encode())]
        try:
            if not stream:
                text, ids, finish = await _collect(gen, usage)
                whole = shape.whole(text, finish, usage, ids, p.prompt_ids)
                await _send_json(send, whole, headers)
                return 200
            first = await gen.read_message()
        except FastSwitchError as err:
            if watch.gone:
                return 499
            raise from_sdk(err) from None
        except ApiError:
            raise
        except Exception as err:
            raise _internal(err) from None
        if first is None:
            raise ApiError(500, "the scheduler ended the stream without an answer")
        await send(
            {"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + headers}
        )
        try:
            await _events(send, gen, first, usage, shape, watch)
        except OSError:
            watch.left()  # the transport broke while we wrote
        return 499 if watch.gone else 200


def _internal(err: Exception) -> ApiError:
    """A failure of ours before the answer began: logged, and a 500 in OpenAI's shape."""
    log.error("request failed", exc_info=err)
    msg = f"internal error ({type(err).__name__})"
    return ApiError(500, msg, type="server_error", code="internal")


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise validation_error(err.errors(include_url=False, include_input=False)) from None


async def _send_json(send: Send, doc: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    """A 200 JSON answer, encoded as Starlette's JSONResponse does."""
    data = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": 200, "headers": start + headers})
    await send({"type": "http.response.body", "body": data})


class _Watch:
    """Reads ``receive`` beside the answer: a client that leaves cancels the scheduler call
    (``gone``), once."""

    def __init__(self, receive: Receive, gen: GenerationStream, metrics: ApiMetrics) -> None:
        self.gone = False
        self._gen = gen
        self._metrics = metrics
        self._task = asyncio.create_task(self._wait(receive))

    async def _wait(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left()

    def left(self) -> None:
        if not self.gone:
            self.gone = True
            self._metrics.disconnected.inc()
            self._gen.cancel()

    def stop(self) -> None:
        """Stops watching (before the loop runs again: the end of an answer is not a leave)."""
        self._task.cancel()


def _ended_badly(reason: int) -> ApiError | None:
    if reason in (pb.FINISH_REASON_CANCELLED, pb.FINISH_REASON_ABORTED):
        what = "cancelled" if reason == pb.FINISH_REASON_CANCELLED else "aborted"
        return ApiError(
            503 if reason == pb.FINISH_REASON_CANCELLED else 500,
            f"the request was {what} by the server",
            type="server_error",
            code=what,
        )
    return None


async def _collect(gen: GenerationStream, usage: Usage) -> tuple[str, list[int], str]:
    texts: list[str] = []
    ids: list[int] = []
    while (msg := await gen.read_message()) is not None:
        usage.completion_tokens += len(msg.token_ids)
        ids.extend(msg.token_ids)
        texts.append(msg.text)
        if msg.finish_reason:
            bad = _ended_badly(msg.finish_reason)
            if bad is not None:
                raise bad
            usage.finish(msg)
            return "".join(texts), ids, finish_reason(msg.finish_reason)
    raise ApiError(500, "the scheduler ended the stream without a final chunk")


async def _events(
    send: Send,
    gen: GenerationStream,
    msg: pb.GenerateChunk,
    usage: Usage,
    shape: Shape,
    watch: _Watch,
) -> None:
    """The SSE events of one answer: (chat: a role chunk), a chunk per scheduler message that
    adds text (or token ids, when they are asked for), the finish chunk, (a usage chunk),
    ``[DONE]``. Events due together go out as one write (the role chunk with the first text;
    what the last message brings, ending with ``[DONE]``). A failure after the first byte is
    an ``error`` event."""
    # a chat stream begins with the role's own chunk; it goes out with the first text
    parts = [shape.chunk("", role=True, usage=usage)] if shape.chat else []
    try:
        while True:
            # each read of a protobuf field builds a new Python object: read each once
            ids = msg.token_ids
            text = msg.text
            n = len(ids)
            usage.completion_tokens += n
            reason = msg.finish_reason
            if reason:
                bad = _ended_badly(reason)
                if bad is not None:
                    parts.append(event(bad.body()))
                    break
                usage.finish(msg)
            if text or (shape.token_ids and n):
                parts.append(shape.chunk(text, usage=usage, ids=ids))
            if reason:
                parts.append(shape.chunk(None, finish_reason(reason), usage=usage))
                if shape.include_usage:
                    parts.append(event(shape.usage_chunk(usage)))
                break
            if parts:
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                parts = []
            nxt = await gen.read_message()
            if nxt is None:  # only after a final message, which ended the loop above
                break
            msg = nxt
    except FastSwitchError as err:
        if watch.gone:
            return
        parts.append(event(from_sdk(err).body()))
    parts.append(DONE)
    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})


def validation_error(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """400 naming the first offending field, as ``messages.0.role: Input should be ...``."""
    if not errors:
        return ApiError(400, "invalid request body")
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc)
    kind = first.get("type", "")
    if kind == "json_invalid":
        return ApiError(
            400, f"the body is not valid JSON: {first.get('msg', '')}", code="json_invalid"
        )
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {where!r}", param=where, code="unknown_field")
    if kind == "missing":
        return ApiError(400, f"{where}: this field is required", param=where or None)
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, f"{where}: {msg}{more}" if where else f"{msg}{more}", param=where or None)
