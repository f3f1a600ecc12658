"""A small synchronous wrapper: the async client runs on a private event loop in a thread that
the wrapper owns and joins on :meth:`Client.close`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar, Unpack

from client.aio import AsyncChat, AsyncClient
from client.options import GenerateArgs, TurnArgs
from client.results import GenerationChunk, GenerationResult, Stats
from client.stream import GenerationStream

T = TypeVar("T")


class Client:
    """Blocking client of a FastSwitch scheduler; same calls as :class:`~client.AsyncClient`.

    Use it as ``with Client(addr) as c:`` (or call :meth:`close`, which joins the loop thread).
    Safe to call from several threads.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 60.0,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._async = AsyncClient(
            address, timeout_s=timeout_s, api_key=api_key, tls=tls, tls_ca=tls_ca
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run_loop, name="fastswitch-client", daemon=True
        )
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    @property
    def address(self) -> str:
        return self._async.address

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (cancelling calls in flight) and joins the loop thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def generate(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        **kw: Unpack[GenerateArgs],
    ) -> GenerationResult:
        """See :meth:`AsyncClient.generate`."""
        return self._run(self._async.generate(prompt, prompt_token_ids, **kw))

    def generate_stream(
        self,
        prompt: str | None = None,
        prompt_token_ids: Sequence[int] | None = None,
        **kw: Unpack[GenerateArgs],
    ) -> Iterator[GenerationChunk]:
        """See :meth:`AsyncClient.generate_stream`; a plain iterator. Leaving it early (``break``,
        ``close()``) cancels the request."""
        return self._iterate(self._async.generate_stream(prompt, prompt_token_ids, **kw))

    def cancel(self, request_id: str, *, tenant: str = "", timeout_s: float | None = None) -> bool:
        """See :meth:`AsyncClient.cancel`."""
        return self._run(self._async.cancel(request_id, tenant=tenant, timeout_s=timeout_s))

    def set_priority(
        self, request_id: str, priority: int, *, tenant: str = "", timeout_s: float | None = None
    ) -> None:
        """See :meth:`AsyncClient.set_priority`."""
        self._run(
            self._async.set_priority(request_id, priority, tenant=tenant, timeout_s=timeout_s)
        )

    def stats(self, *, timeout_s: float | None = None) -> Stats:
        """See :meth:`AsyncClient.stats`."""
        return self._run(self._async.stats(timeout_s=timeout_s))

    def chat(
        self, *, tenant: str = "", system: str | None = None, ttl_s: float | None = None
    ) -> Chat:
        """A new conversation; see :meth:`AsyncClient.chat`."""
        return Chat(self, self._async.chat(tenant=tenant, system=system, ttl_s=ttl_s))

    # ------------------------------------------------------------------ plumbing

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: the call goes too
            raise

    def _iterate(self, stream: GenerationStream) -> Iterator[GenerationChunk]:
        try:
            while (chunk := self._run(_next_chunk(stream))) is not None:
                yield chunk
        finally:
            if not self._closed:
                self._run(stream.aclose())


class Chat:
    """Blocking view of an :class:`~client.AsyncChat`; ``with c.chat() as chat:`` ends it."""

    def __init__(self, client: Client, chat: AsyncChat) -> None:
        self._client = client
        self._chat = chat

    @property
    def conversation_id(self) -> str | None:
        return self._chat.conversation_id

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def send(self, message: str, **kw: Unpack[TurnArgs]) -> GenerationResult:
        """See :meth:`AsyncChat.send`."""
        return self._client._run(self._chat.send(message, **kw))

    def send_stream(self, message: str, **kw: Unpack[TurnArgs]) -> Iterator[GenerationChunk]:
        """See :meth:`AsyncChat.send_stream`; a plain iterator."""
        return self._client._iterate(self._chat.send_stream(message, **kw))

    def end(self, *, timeout_s: float | None = None) -> int:
        """See :meth:`AsyncChat.end`."""
        return self._client._run(self._chat.end(timeout_s=timeout_s))


async def _next_chunk(stream: GenerationStream) -> GenerationChunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
