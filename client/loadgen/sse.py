"""Server-sent events of OpenAI's streaming completions, read incrementally; plain code (no I/O).

:class:`SseParser` turns the bytes of a stream, however they are split across reads, into the
``data`` of each complete event (lines ending ``\\n`` or ``\\r\\n``; several ``data:`` lines
of one event are joined with ``\\n``; comments and other fields are skipped; an event is
complete at its blank line, so a half-received one is never returned). :func:`decode_event`
reads one event of ``POST /v1/completions`` with ``return_token_ids``: ``[DONE]`` (None), a
chunk (its ``token_ids``, and ``usage`` when it carries one), or an ``{"error": ...}`` event,
which raises :class:`RequestFailed` with the door's message.
"""

from __future__ import annotations

import json
from typing import Any

from client.loadgen.stats import ServerUsage
from client.loadgen.transport import Piece, RequestFailed

DONE = "[DONE]"
BAD_STREAM = "HTTP_BAD_STREAM"  # the stream is not what the door sends
STREAM_ERROR = "HTTP_STREAM_ERROR"  # the door's error event, after the stream began


class SseParser:
    """Feed it the bytes as they come; it hands back each complete event's data."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of the events that ``chunk`` completes, in order."""
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        out: list[str] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(b":")
            if name == b"data":
                value = value[1:] if value.startswith(b" ") else value
                try:
                    self._data.append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    raise RequestFailed(BAD_STREAM, "an event that is not UTF-8") from None
        return out

    @property
    def pending(self) -> bool:
        """Whether part of an event has been received but not its end."""
        return bool(self._buf.strip() or self._data)


def decode_event(data: str) -> Piece | None:
    """One event's data: None for ``[DONE]``, else the piece it adds; RequestFailed for an
    error event or one that is not a completion chunk."""
    if data == DONE:
        return None
    try:
        obj: Any = json.loads(data)
    except ValueError:
        raise RequestFailed(BAD_STREAM, f"an event that is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise RequestFailed(BAD_STREAM, f"an event that is not a JSON object: {data[:80]!r}")
    if "error" in obj:
        raise RequestFailed(STREAM_ERROR, error_message(obj))
    ids: tuple[int, ...] = ()
    choices = obj.get("choices") or []
    if choices:
        got = choices[0].get("token_ids") if isinstance(choices[0], dict) else None
        if not isinstance(got, list) or not all(isinstance(t, int) for t in got):
            raise RequestFailed(
                BAD_STREAM,
                f"a chunk without token_ids (the door must serve return_token_ids): {data[:80]!r}",
            )
        ids = tuple(got)
    return Piece(ids, usage=_usage(obj.get("usage")))


def _usage(u: Any) -> ServerUsage | None:
    if not isinstance(u, dict) or not isinstance(u.get("prompt_tokens"), int):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return ServerUsage(u["prompt_tokens"], cached if isinstance(cached, int) else None)


def error_message(obj: Any) -> str:
    """The message of OpenAI's error object ``{"error": {"message": ...}}`` (else the JSON)."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    return json.dumps(obj)[:300]
