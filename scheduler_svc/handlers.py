"""The public API's method handlers: each parses its own request bytes and contains its failures.

``add_fastswitch_servicer`` registers a ``FastSwitchServicer`` as the generated
``add_FastSwitchServicer_to_server`` would (same service, methods and response serializers),
with two differences that make every outcome a documented status:

* the request arrives as raw bytes and is parsed here: bytes that are not a valid message (bad
  wire format, a string field that is not UTF-8) end the call with INVALID_ARGUMENT "malformed
  request", where gRPC's own deserializer would answer UNKNOWN naming a Python class;
* an exception the servicer did not map (a bug) is logged with its traceback and ends the call
  with ABORTED "internal error", never UNKNOWN or a message naming a class.

A client's own cancel still ends the call as CANCELLED (the task is cancelled; nothing here
catches that). The generated stubs stay untouched (``scripts/gen_protos.sh``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from proto import scheduler_pb2 as api
from scheduler_svc.errors import InvalidArgument

log = logging.getLogger(__name__)

SERVICE = "fastswitch.v1.FastSwitch"
MALFORMED = "malformed request"
INTERNAL = "internal error (see the scheduler's log)"

M = TypeVar("M", bound=Message)
Context: TypeAlias = grpc.aio.ServicerContext
Unary = Callable[[Any, Context], Awaitable[Message]]
Streaming = Callable[[Any, Context], AsyncIterator[Message]]
Bidi = Callable[[AsyncIterator[Any], Context], AsyncIterator[Message]]


async def parse(cls: type[M], raw: bytes, context: Context) -> M:
    """`raw` as a `cls` message; ends the call with INVALID_ARGUMENT if it is not one."""
    try:
        return cls.FromString(raw)
    except DecodeError:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
        raise  # pragma: no cover (abort raises)


async def _internal(context: Context, method: str) -> None:
    """Logs the exception being handled and ends the call ABORTED; does nothing more when the
    call is already over (its client left, or a status was already being sent)."""
    log.exception("unexpected error in a public call", extra={"method": method})
    try:
        await context.abort(grpc.StatusCode.ABORTED, INTERNAL)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.debug("the call ended before its status could be sent", extra={"method": method})


def _unary(method: Unary, cls: type[Message]) -> Callable[[bytes, Context], Awaitable[Message]]:
    async def handle(raw: bytes, context: Context) -> Message:
        request = await parse(cls, raw, context)
        try:
            return await method(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception:
            if not context.cancelled():  # the client left: nobody to answer
                await _internal(context, method.__name__)
            raise

    return handle


def _streaming(method: Streaming, cls: type[Message]) -> Callable[[bytes, Context], Any]:
    async def handle(raw: bytes, context: Context) -> AsyncIterator[Message]:
        request = await parse(cls, raw, context)
        try:
            async for item in method(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception:
            if not context.cancelled():  # the client left: nobody to answer
                await _internal(context, method.__name__)

    return handle


def _bidi(method: Bidi, cls: type[Message]) -> Callable[[AsyncIterator[bytes], Context], Any]:
    """A stream of requests: each message parsed as it comes; a malformed one ends the call
    with INVALID_ARGUMENT (the method sees it as that SchedulerError from its iterator)."""

    async def parsed(raw_requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for raw in raw_requests:
            try:
                yield cls.FromString(raw)
            except DecodeError:
                raise InvalidArgument(MALFORMED) from None

    async def handle(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Message]:
        try:
            async for item in method(parsed(raw), context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception:
            if not context.cancelled():
                await _internal(context, method.__name__)

    return handle


def method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler]:
    """The FastSwitch methods of `servicer`, each taking raw request bytes."""

    def unary(method: Unary, cls: type[Message], out: type[Message]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            _unary(method, cls), response_serializer=out.SerializeToString
        )

    def streaming(method: Streaming, cls: type[Message]) -> grpc.RpcMethodHandler:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(method, cls), response_serializer=api.GenerateChunk.SerializeToString
        )

    return {
        "Generate": streaming(servicer.Generate, api.GenerateRequest),
        "GenerateMany": grpc.stream_stream_rpc_method_handler(
            _bidi(servicer.GenerateMany, api.ManyRequest),
            response_serializer=api.ManyResponse.SerializeToString,
        ),
        "Chat": streaming(servicer.Chat, api.ChatRequest),
        "EndConversation": unary(
            servicer.EndConversation, api.EndConversationRequest, api.EndConversationResponse
        ),
        "Cancel": unary(servicer.Cancel, api.CancelRequest, api.CancelResponse),
        "SetPriority": unary(servicer.SetPriority, api.SetPriorityRequest, api.SetPriorityResponse),
        "GetStats": unary(servicer.GetStats, api.StatsRequest, api.StatsResponse),
    }


def add_fastswitch_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Registers `servicer` (a ``FastSwitchServicer``) on `server`; a ``GrpcService.add`` adder."""
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
