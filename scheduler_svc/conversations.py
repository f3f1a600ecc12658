"""Conversations: the exact token ids of each conversation's history, kept by the scheduler.

A turn's prompt is the history's ids followed by the new message rendered through the model's chat
template — never a re-tokenisation of the whole text, so the ids (and the KV they index) of earlier
turns are reused exactly. Plain code, no gRPC; a conversation belongs to one tenant, and another
tenant's id is simply unknown (NotFound), so ids leak nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scheduler_svc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    invalid_argument,
)
from servekit.tokenizer import Tokenizer
from servekit.validation import clip, validate_ttl


@dataclass(slots=True)
class Conversation:
    conversation_id: str
    tenant: str
    ttl_s: float
    last_used_s: float
    history: list[int] = field(default_factory=list)
    system: str | None = None
    turns: int = 0
    busy: bool = False


class ConversationBusy(FailedPrecondition):
    """A turn of this conversation is still being generated."""


class Conversations:
    """Owns every open conversation: its exact history ids, tenant, ttl and whether a turn is in
    progress. Called by the frontend at the start and end of each turn. Invariant: a conversation
    has at most one turn in progress and is seen only by its own tenant."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        default_ttl_s: float = 600.0,
        max_conversations: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokenizer = tokenizer
        self._default_ttl_s = default_ttl_s
        self._max = max_conversations
        self._clock = clock
        self._by_id: dict[str, Conversation] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def open(
        self, conversation_id: str | None, tenant: str, *, system: str | None, ttl_s: float | None
    ) -> Conversation:
        """The conversation to continue, or a new one when `conversation_id` is None; `ttl_s`
        None keeps its ttl (a new one gets the default).

        NotFound for an unknown, expired or other tenant's id; InvalidArgument for a bad ttl;
        ConversationBusy while a turn is in progress; ResourceExhausted when the table is full.
        """
        now = self._clock()
        if ttl_s is not None:
            with invalid_argument():
                validate_ttl(ttl_s, "ttl_s")  # finite: a NaN ttl would never expire
        if conversation_id is not None:
            conv = self._by_id.get(conversation_id)
            if conv is None or conv.tenant != tenant or self._expired(conv, now):
                raise NotFound(_unknown(conversation_id))
            if conv.busy:
                raise ConversationBusy(
                    f"conversation {clip(conversation_id)} has a turn in progress"
                )
            if system:
                raise InvalidArgument("system is only accepted on a conversation's first turn")
            if ttl_s is not None:
                conv.ttl_s = ttl_s
            return conv
        self.expire()
        if len(self._by_id) >= self._max:
            raise ResourceExhausted(f"too many open conversations ({self._max})")
        conv = Conversation(
            conversation_id="conv-" + secrets.token_hex(12),
            tenant=tenant,
            ttl_s=self._default_ttl_s if ttl_s is None else ttl_s,
            last_used_s=now,
            system=system or None,
        )
        self._by_id[conv.conversation_id] = conv
        return conv

    def begin_turn(self, conv: Conversation, message: str) -> list[int]:
        """Prompt ids of the next turn: history + the message, ready for the model's reply."""
        if not message:
            raise InvalidArgument("message is empty")
        if conv.turns == 0:
            messages = [("system", conv.system)] if conv.system else []
            with invalid_argument():
                prompt = self._tokenizer.apply_chat_template([*messages, ("user", message)])
        else:
            with invalid_argument():  # the history ends with the reply's end-of-turn token
                prompt = conv.history + self._tokenizer.continue_chat([("user", message)])
        conv.busy = True
        conv.last_used_s = self._clock()
        return prompt

    def end_turn(self, conv: Conversation, prompt: list[int], reply: list[int], ok: bool) -> None:
        """Appends a finished turn (its exact ids) to the history; a failed turn leaves none."""
        conv.busy = False
        conv.last_used_s = self._clock()
        if not ok:
            return
        eos = self._tokenizer.eos_token_ids
        conv.history = prompt + reply
        if eos and (not reply or reply[-1] not in eos):
            conv.history.append(eos[-1])  # close the assistant's message as the template does
        conv.turns += 1

    def end(self, conversation_id: str, tenant: str) -> Conversation:
        """Deletes a conversation (NotFound if unknown or another tenant's)."""
        conv = self._by_id.get(conversation_id)
        if conv is None or conv.tenant != tenant:
            raise NotFound(_unknown(conversation_id))
        del self._by_id[conversation_id]
        return conv

    def expire(self) -> list[Conversation]:
        """Drops conversations idle for longer than their ttl; returns them."""
        now = self._clock()
        gone = [c for c in self._by_id.values() if self._expired(c, now)]
        for conv in gone:
            del self._by_id[conv.conversation_id]
        return gone

    @staticmethod
    def _expired(conv: Conversation, now: float) -> bool:
        return not conv.busy and now - conv.last_used_s > conv.ttl_s


def _unknown(conversation_id: str) -> str:
    return f"conversation {clip(conversation_id)} (unknown, expired or not yours)"
