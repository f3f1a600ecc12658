"""Who calls the scheduler's public API: API keys checked once per call by a server interceptor.

With keys configured (``--api-keys FILE``, format in ``servekit/keys.py``), every call of
``fastswitch.v1.FastSwitch`` needs ``authorization: Bearer KEY`` metadata: the interceptor looks
the key up (by its SHA-256 digest) once, answers UNAUTHENTICATED for a missing or unknown key
before the servicer runs, and otherwise runs the call with its :class:`Caller` set in a context
variable, which the servicer reads with :func:`current_caller`. Other services on the same
listener (StepLink, health, reflection) are not this interceptor's business and pass untouched.
Without keys no interceptor is installed and every call is :data:`OPEN`: the tenant field is
the identity, as before.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from scheduler_svc.errors import PermissionDenied
from servekit.keys import Identity, KeyRing, UnknownKey, narrows

PUBLIC_SERVICE = "fastswitch.v1.FastSwitch"


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of one call. ``identity`` None: keys are off (the server is open)."""

    identity: Identity | None = None

    def tenant(self, requested: str) -> str:
        """The tenant a Generate, Chat or EndConversation acts for, given the request's tenant
        field. Open: the field ("" is ``default``). A tenant key: "" is the key's tenant, else
        the field must be the key's tenant or narrow it (PermissionDenied otherwise). A service
        or admin key: the field, "" being the key's own tenant."""
        who = self.identity
        if who is None:
            return requested or "default"
        if not requested:
            return who.tenant
        if who.any_tenant or narrows(requested, who.tenant):
            return requested
        raise PermissionDenied(
            f"this API key acts for tenant {who.tenant!r} and its narrowings "
            f"({who.tenant}.NAME) only"
        )

    def scope(self, requested: str) -> str | None:
        """Whose requests a Cancel or SetPriority may touch (None: every tenant's). Open: the
        tenant field, "" meaning any. A service or admin key with "": any. Else
        :meth:`tenant` (a tenant key's "" is its own tenant)."""
        if self.identity is None:
            return requested or None
        if not requested and self.identity.any_tenant:
            return None
        return self.tenant(requested)

    @property
    def stats_scope(self) -> str | None:
        """Whose rows GetStats shows: every tenant's when open or for an admin key (None),
        else the key's tenant and its narrowings."""
        who = self.identity
        return None if who is None or who.role == "admin" else who.tenant


OPEN = Caller()

_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("fastswitch_caller", default=OPEN)


def current_caller() -> Caller:
    """The caller of the public-API call running in this task (OPEN without keys)."""
    return _CALLER.get()


Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Checks the API key of every call of the public service; see the module's docstring."""

    def __init__(self, keys: KeyRing, *, service: str = PUBLIC_SERVICE) -> None:
        if not keys.enabled:
            raise ValueError("ApiKeyInterceptor needs at least one key")
        self._keys = keys
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self._prefix):
            return handler
        authorization = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode("latin-1")
                break
        try:
            caller = Caller(self._keys.identity_for(authorization))
        except UnknownKey as err:
            refusal = _refusal(str(err))
            return _wrapped(handler, lambda _: refusal)
        return _wrapped(handler, lambda behaviour: _as(caller, behaviour, handler))


def _refusal(message: str) -> Behaviour:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return refuse


def _as(caller: Caller, behaviour: Behaviour, handler: grpc.RpcMethodHandler) -> Behaviour:
    """`behaviour` run with `caller` set. Each call runs in a task of its own (grpc.aio), so
    setting the variable there is seen by that call alone."""
    if handler.response_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            _CALLER.set(caller)
            async for item in behaviour(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _CALLER.set(caller)
        return await behaviour(request, context)

    return unary


def _wrapped(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Behaviour], Behaviour]
) -> grpc.RpcMethodHandler:
    """A handler like `handler` whose behaviour is ``wrap(behaviour)``."""
    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), des, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), des, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), des, ser)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), des, ser)
