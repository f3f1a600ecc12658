"""Stop strings and incremental text (scheduler_svc/deltas.py): the matcher on plain strings, then
through the tiny model's byte tokenizer one token at a time."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_svc.deltas import StopMatcher, TextDelta
from servekit.tokenizer import ByteTokenizer


def pushes(stop, pieces, final_piece=True) -> tuple[list[str], StopMatcher]:
    """What the matcher releases for each piece (the last one pushed as final)."""
    m = StopMatcher(stop)
    out = [m.push(p, final_piece and i == len(pieces) - 1) for i, p in enumerate(pieces)]
    return out, m


def test_stop_string_inside_one_piece():
    out, m = pushes(["STOP"], ["hello STOP world", " more"])
    assert out == ["hello ", ""] and m.matched


def test_stop_string_spanning_pieces_is_held_back_until_it_completes():
    out, m = pushes(["STOP"], ["he", "llo ST", "O", "P and more"])
    assert out == ["he", "llo ", "", ""] and m.matched


def test_stop_string_at_the_very_start():
    out, m = pushes(["ab"], ["a", "b", "c"])
    assert out == ["", "", ""] and m.matched
    out, m = pushes(["ab"], ["abc"])
    assert out == [""] and m.matched


def test_earliest_match_wins_and_the_first_completed_ends_it():
    out, m = pushes(["world", "lo w"], ["hello world"])
    assert out == ["hel"] and m.matched
    # "bc" completes before "abcd" could: the output ends before it.
    out, m = pushes(["abcd", "bc"], ["a", "b", "c", "d"])
    assert "".join(out) == "a" and m.matched
    # Both in the same piece: the one that starts first.
    out, m = pushes(["abcd", "bc"], ["abcd"])
    assert out == [""] and m.matched


def test_a_stop_string_with_a_multibyte_character():
    out, m = pushes(["é!"], ["caf", "é", "!", " more"])
    assert out == ["caf", "", "", ""] and m.matched
    out, m = pushes(["é!"], ["caf", "é", "?", "x"])
    assert out == ["caf", "", "é?", "x"] and not m.matched


def test_held_back_text_is_released_when_it_cannot_match_or_at_the_end():
    out, m = pushes(["STOP"], ["abc ST", "X"], final_piece=False)
    assert out == ["abc ", "STX"] and not m.matched
    out, m = pushes(["STOP"], ["abc ST", ""])
    assert out == ["abc ", "ST"] and not m.matched
    # A tail that is the start of two stop strings waits for the longer one.
    out, _ = pushes(["aab", "ab"], ["xa", "a", "c"], final_piece=False)
    assert out == ["x", "", "aac"]


def test_no_stop_strings_release_everything_at_once():
    out, m = pushes([], ["a", "bc", ""])
    assert out == ["a", "bc", ""] and not m.matched


def test_an_empty_stop_string_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        StopMatcher(["ok", ""])


def expected_cut(text: str, stop: list[str], ends: list[int]) -> tuple[str, int | None]:
    """The reference: the first checkpoint (piece end) whose text contains a stop string; the
    text before the earliest match there, and that checkpoint. No match: all of it, None."""
    for end in ends:
        starts = [i for s in stop if (i := text[:end].find(s)) >= 0]
        if starts:
            return text[: min(starts)], end
    return text, None


ALPHABET = st.sampled_from("abé€ \n")


@given(
    text=st.text(ALPHABET, max_size=40),
    stop=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_released_text_is_always_a_prefix_of_the_answer(text, stop, cuts):
    ends = sorted({min(c, len(text)) for c in cuts} | {len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise([0, *ends])]
    want, stopped_at = expected_cut(text, stop, ends)
    m = StopMatcher(stop)
    released = ""
    longest = max((len(s) for s in stop), default=0)
    for i, piece in enumerate(pieces):
        released += m.push(piece, i == len(pieces) - 1)
        assert want.startswith(released)  # never shows what comes after the cut
        if not m.matched:  # what is held back is short, and only the start of a stop string
            held = text[len(released) : ends[i]]
            assert len(held) < max(longest, 1)
            assert not held or any(s.startswith(held) for s in stop)
        assert m.matched == (stopped_at is not None and ends[i] >= stopped_at)
    assert released == want


@given(
    text=st.text(ALPHABET, min_size=1, max_size=30),
    stop=st.lists(st.text(ALPHABET, min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_byte_tokens_stop_at_the_token_that_completes_the_stop_string(text, stop):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    # Text is checked whenever a character completes: after each character's last byte.
    char_ends = list(range(1, len(text) + 1))
    want, stopped_at = expected_cut(text, stop, char_ends)
    delta = TextDelta(tok, stop)
    pieces: list[str] = []
    fed = 0
    while fed < len(ids) and not delta.stopped:
        fed += 1
        pieces.append(delta.next(ids[:fed], final=fed == len(ids)))
    assert "".join(pieces) == want
    assert all("\ufffd" not in p for p in pieces)  # no character is ever cut
    if stopped_at is None:
        assert not delta.stopped and fed == len(ids)
    else:
        assert delta.stopped and fed == len(text[:stopped_at].encode())


def test_text_before_an_incomplete_character_is_released():
    tok = ByteTokenizer()
    delta = TextDelta(tok)
    euro = "€".encode()
    assert delta.next([*b"ab", euro[0]], final=False) == "ab"
    assert delta.next([*b"ab", *euro[:2]], final=False) == ""
    assert delta.next([*b"ab", *euro], final=False) == "€"
    # Cut off for good (the request ended mid-character): the replacement character shows.
    cut = TextDelta(tok)
    assert cut.next([*b"x", euro[0]], final=False) == "x"
    assert cut.next([*b"x", euro[0]], final=True) == "\ufffd"
