"""FastSwitch client SDK: an asyncio client with a small synchronous wrapper.

::

    async with AsyncClient("127.0.0.1:50051") as c:
        result = await c.generate("Hello", max_tokens=16, tenant="alice")
        greedy = SamplingOptions(max_tokens=64, stop=("\n\n",))  # or one options object
        result = await c.generate("Hello", options=greedy)
        async for chunk in c.generate_stream("Hello"):
            ...
        chat = c.chat(tenant="alice")
        reply = await chat.send("Hi!")

    with Client("127.0.0.1:50051") as c:
        print(c.generate("Hello").text)

Failed calls raise the typed exceptions of :mod:`client.errors` (all :class:`FastSwitchError`).
"""

from client.aio import AsyncChat, AsyncClient, FastSwitchClient
from client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FastSwitchError,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from client.options import SamplingOptions
from client.results import (
    FinishReason,
    GenerationChunk,
    GenerationResult,
    RequestMetrics,
    Stats,
    TenantStats,
    WorkerStats,
)
from client.stream import GenerationStream
from client.sync import Chat, Client

__all__ = [
    "AsyncChat",
    "AsyncClient",
    "Cancelled",
    "Chat",
    "Client",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FastSwitchClient",
    "FastSwitchError",
    "FinishReason",
    "GenerationChunk",
    "GenerationResult",
    "GenerationStream",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RequestMetrics",
    "ResourceExhausted",
    "SamplingOptions",
    "Stats",
    "TenantStats",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WorkerStats",
]
