"""Server-sent events: one ``data:`` event of a JSON payload, and the stream's end."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    """One ``data:`` event of a JSON payload (compact, UTF-8: no ``\\u`` escapes)."""
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + (b"\n\n")
    )
