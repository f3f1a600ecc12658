"""Bounded inputs at the scheduler's edge (Frontend, Conversations, servekit.validation): every
size is checked before any work on the value, with INVALID_ARGUMENT and a short message that
quotes at most ECHO_CHARS characters of it. The tokenizer is a tripwire: it fails if it is
handed a text over the bound, so "rejected before tokenising" is checked, not assumed."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest

from scheduler_svc.config import CoreConfig
from scheduler_svc.conversations import Conversations
from scheduler_svc.core import SchedulerCore
from scheduler_svc.errors import InvalidArgument, NotFound
from scheduler_svc.frontend import Frontend, NewRequest, NewTurn
from scheduler_svc.policy import make_policy
from servekit.tokenizer import ByteTokenizer
from servekit.validation import (
    ECHO_CHARS,
    MAX_CONVERSATION_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    MAX_STOP_TOKEN_IDS,
    MAX_TENANT_CHARS,
    MAX_TTL_S,
    PROMPT_BYTES_PER_TOKEN,
    clip,
    validate_text_bytes,
)

MAX_LEN = 256
BOUND = MAX_LEN * PROMPT_BYTES_PER_TOKEN  # the default prompt-bytes bound


class TripwireTokenizer(ByteTokenizer):
    """The tiny model's tokenizer, failing the test if it is given a text over `limit` chars."""

    def __init__(self, limit: int = BOUND) -> None:
        super().__init__()
        self.limit = limit
        self.calls = 0

    def _check(self, text: str) -> None:
        self.calls += 1
        assert len(text) <= self.limit, f"the tokenizer was handed {len(text)} characters"

    def encode(self, text: str) -> list[int]:
        self._check(text)
        return super().encode(text)

    def encode_with_specials(self, text: str) -> list[int]:
        self._check(text)
        return super().encode_with_specials(text)


class LengthOnly(Sequence[int]):
    """A token-id list that may be measured but not read or copied."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        raise AssertionError("the id list was read before its length was checked")

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("the id list was copied before its length was checked")


@pytest.fixture
def tok() -> TripwireTokenizer:
    return TripwireTokenizer()


@pytest.fixture
def frontend(tok) -> Frontend:
    core = SchedulerCore(CoreConfig(), make_policy("vtc"), eos_token_ids=[257])
    return Frontend(core, tok, vocab_size=262, max_model_len=MAX_LEN, max_tokens_limit=128)


def new(**kw) -> NewRequest:
    base = {"prompt_text": None, "prompt_ids": [1, 2, 3], "max_tokens": 4, "tenant": "a"}
    return NewRequest(**{**base, **kw})


def turn(message="hi", **kw) -> NewTurn:
    base = {"conversation_id": None, "tenant": "a", "system": None, "ttl_s": None}
    return NewTurn(message=message, request=new(prompt_ids=None), **{**base, **kw})


def refused(call, *args) -> str:
    with pytest.raises(InvalidArgument) as err:
        call(*args)
    return str(err.value)


async def refused_async(call, *args) -> str:
    with pytest.raises(InvalidArgument) as err:
        await call(*args)
    return str(err.value)


def test_a_63_mb_text_is_refused_at_once_without_tokenising(frontend, tok):
    huge = "x" * (63 << 20)
    message = refused(frontend.prepare, new(prompt_ids=None, prompt_text=huge))
    assert message == f"the prompt text is longer than {BOUND} bytes"
    assert tok.calls == 0
    # The bound is on UTF-8 bytes: fewer characters than the bound may still be too many bytes.
    euros = "€" * (BOUND // 3 + 1)
    assert len(euros) < BOUND
    refused(frontend.prepare, new(prompt_ids=None, prompt_text=euros))
    assert tok.calls == 0
    # At the bound it is tokenised, and then the context decides.
    message = refused(frontend.prepare, new(prompt_ids=None, prompt_text="x" * BOUND))
    assert "max_model_len" in message and tok.calls == 1
    ids, *_ = frontend.prepare(new(prompt_ids=None, prompt_text="hello"))
    assert ids == [256, *b"hello"]


def test_the_prompt_bytes_bound_is_a_setting(tok):
    core = SchedulerCore(CoreConfig(), make_policy("vtc"), eos_token_ids=[257])
    small = Frontend(
        core, tok, vocab_size=262, max_model_len=MAX_LEN, max_tokens_limit=8, max_prompt_bytes=10
    )
    assert small.max_prompt_bytes == 10
    small.prepare(new(prompt_ids=None, prompt_text="x" * 10))
    assert "longer than 10 bytes" in refused(
        small.prepare, new(prompt_ids=None, prompt_text="x" * 11)
    )


def test_an_over_long_id_list_is_refused_before_it_is_copied(frontend):
    message = refused(frontend.prepare, new(prompt_ids=LengthOnly(10_000_000)))
    assert "10000000 token ids" in message and str(MAX_LEN) in message
    refused(frontend.prepare, new(prompt_ids=LengthOnly(MAX_LEN)))
    ids, *_ = frontend.prepare(new(prompt_ids=list(range(MAX_LEN - 4))))
    assert len(ids) == MAX_LEN - 4


@pytest.mark.parametrize(
    "request_id",
    ["x" * (MAX_REQUEST_ID_CHARS + 1), "has space", "new\nline", "é", "x" * 100_000],
)
def test_request_ids_are_short_and_of_a_safe_alphabet(frontend, request_id):
    message = refused(frontend.prepare, new(request_id=request_id))
    assert message.startswith("request_id must be") and request_id[:8] not in message


def test_the_longest_request_id_of_the_alphabet_is_accepted(frontend):
    frontend.prepare(new(request_id="a" * MAX_REQUEST_ID_CHARS))
    frontend.prepare(new(request_id="cmpl-1:a.b@c/d+e=f~g_h"))


@pytest.mark.parametrize(
    "tenant", ["t" * (MAX_TENANT_CHARS + 1), "t" * 10_000, "bad tenant", "ünï", "a\x00b"]
)
def test_a_bad_tenant_is_refused_by_its_length_first_and_never_echoed(frontend, tenant):
    message = refused(frontend.prepare, new(tenant=tenant))
    assert message.startswith("tenant must be") and len(message) < 80
    assert tenant[:4] not in message.removeprefix("tenant")


def test_an_unknown_tenant_lists_nothing(tok):
    core = SchedulerCore(CoreConfig(), make_policy("vtc"), eos_token_ids=[257])
    strict = Frontend(
        core, tok, vocab_size=262, max_model_len=MAX_LEN, max_tokens_limit=8, tenants={"vip": 2}
    )
    message = refused(strict.prepare, new(tenant="mallory"))
    assert "mallory" not in message and "vip" not in message


@pytest.mark.parametrize("ttl", [math.nan, math.inf, -math.inf, 1e308, -1.0, MAX_TTL_S + 1])
def test_retain_ttl_s_must_be_finite_and_bounded(frontend, ttl):
    assert "retain_ttl_s" in refused(frontend.prepare, new(retain_ttl_s=ttl))


def test_ttls_at_the_bounds_are_accepted(frontend):
    for ttl in (0.0, 1.5, MAX_TTL_S):
        frontend.prepare(new(retain_ttl_s=ttl))
    conv = frontend.conversations.open(None, "a", system=None, ttl_s=MAX_TTL_S)
    assert conv.ttl_s == MAX_TTL_S


def test_stop_token_id_lists_are_bounded(frontend):
    ids = tuple(range(MAX_STOP_TOKEN_IDS + 1))
    assert "stop_token_ids" in refused(frontend.prepare, new(stop_token_ids=ids))
    frontend.prepare(new(stop_token_ids=ids[:MAX_STOP_TOKEN_IDS]))


def test_a_long_stop_string_is_quoted_only_in_part(frontend):
    stop = "s" * 200 + "z" * 100
    message = refused(frontend.prepare, new(stop=(stop,)))
    assert clip(stop) in message and "z" not in message


@pytest.mark.parametrize("ttl", [math.nan, math.inf, 1e308, -1.0])
async def test_a_chat_ttl_must_be_finite_and_bounded(frontend, tok, ttl):
    assert "ttl_s" in await refused_async(frontend.open_turn, turn(ttl_s=ttl))
    # The conversation table refuses it too (a NaN ttl would never expire).
    with pytest.raises(InvalidArgument):
        frontend.conversations.open(None, "a", system=None, ttl_s=ttl)
    assert len(frontend.conversations) == 0 and tok.calls == 0


@pytest.mark.parametrize("field", ["message", "system"])
async def test_chat_texts_are_bounded_before_the_chat_template(frontend, tok, field):
    huge = "m" * (BOUND + 1)
    t = turn(message=huge) if field == "message" else turn(system=huge)
    assert await refused_async(frontend.open_turn, t) == f"{field} is longer than {BOUND} bytes"
    assert tok.calls == 0 and len(frontend.conversations) == 0


@pytest.mark.parametrize(
    "conversation_id", ["c" * (MAX_CONVERSATION_ID_CHARS + 1), "conv 1", "c" * 100_000]
)
async def test_conversation_ids_are_bounded(frontend, conversation_id):
    message = await refused_async(frontend.open_turn, turn(conversation_id=conversation_id))
    assert message.startswith("conversation_id must be") and "ccc" not in message
    message = refused(frontend.end_conversation, conversation_id, "a")
    assert message.startswith("conversation_id must be")


async def test_a_chat_s_sampling_is_checked_before_its_turn_starts(frontend, tok):
    bad = turn()
    bad = replace(bad, request=replace(bad.request, temperature=math.nan))
    assert "temperature" in await refused_async(frontend.open_turn, bad)
    assert tok.calls == 0 and len(frontend.conversations) == 0


async def test_cancel_and_set_priority_check_the_id_and_quote_little(frontend):
    long_id = "r" * MAX_REQUEST_ID_CHARS
    for call in (frontend.cancel, lambda rid: frontend.set_priority(rid, 1)):
        message = await refused_async(call, "r" * (MAX_REQUEST_ID_CHARS + 1))
        assert message.startswith("request_id must be")
        with pytest.raises(NotFound) as err:
            await call(long_id)
        assert clip(long_id) in str(err.value) and long_id not in str(err.value)


def test_unknown_conversations_are_quoted_only_in_part():
    convs = Conversations(ByteTokenizer())
    cid = "c" * MAX_CONVERSATION_ID_CHARS
    with pytest.raises(NotFound) as err:
        convs.open(cid, "a", system=None, ttl_s=None)
    assert clip(cid) in str(err.value) and cid not in str(err.value)


def test_text_bytes_are_decided_by_length_when_they_can_be():
    validate_text_bytes("é" * 5, "t", 10)  # 10 bytes
    with pytest.raises(ValueError, match="longer than 9 bytes"):
        validate_text_bytes("é" * 5, "t", 9)
    validate_text_bytes("\ud800", "t", 3)  # a lone surrogate counts, and does not raise
    assert len(clip("x" * 1000)) <= ECHO_CHARS + 5
