"""Conversation bookkeeping: exact history ids, ttl, busy turns, privacy (plain code)."""

from __future__ import annotations

import pytest

from scheduler_svc.conversations import ConversationBusy, Conversations
from scheduler_svc.errors import InvalidArgument, NotFound
from servekit.tokenizer import load_tokenizer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_turns_append_exact_ids_and_close_the_reply():
    tok = load_tokenizer("tiny")
    convs = Conversations(tok)
    conv = convs.open(None, "t", system=None, ttl_s=None)
    p1 = convs.begin_turn(conv, "hi")
    assert p1 == tok.apply_chat_template([("user", "hi")])
    convs.end_turn(conv, p1, [65, 66], ok=True)
    assert conv.history == [*p1, 65, 66, 261]  # <|end|> closes the assistant's message
    p2 = convs.begin_turn(conv, "more")
    assert p2[: len(conv.history)] == conv.history and p2[len(conv.history)] != tok.bos_token_id
    convs.end_turn(conv, p2, [], ok=False)  # a failed turn leaves no trace
    assert conv.turns == 1 and not conv.busy


def test_ttl_busy_and_privacy():
    clock = Clock()
    convs = Conversations(load_tokenizer("tiny"), default_ttl_s=10, clock=clock)
    conv = convs.open(None, "t", system="sys", ttl_s=None)
    prompt = convs.begin_turn(conv, "x")
    with pytest.raises(ConversationBusy):
        convs.open(conv.conversation_id, "t", system=None, ttl_s=None)
    clock.now = 100.0
    assert convs.expire() == []  # never expires mid-turn
    convs.end_turn(conv, prompt, [1], ok=True)
    with pytest.raises(NotFound):
        convs.open(conv.conversation_id, "other", system=None, ttl_s=None)
    clock.now = 111.0
    with pytest.raises(NotFound):
        convs.open(conv.conversation_id, "t", system=None, ttl_s=None)
    assert len(convs) == 1 and convs.expire() and len(convs) == 0
    with pytest.raises(InvalidArgument):
        convs.open(None, "t", system=None, ttl_s=-1)
