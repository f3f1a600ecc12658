"""Stop strings and per-request retention through the real processes (KV store, two workers,
scheduler) and the SDK, with the tiny model's greedy output."""

from __future__ import annotations

import asyncio

import pytest

from client import AsyncClient, Client, InvalidArgument
from fastswitch.offline import generate_offline
from servekit.tokenizer import ByteTokenizer

pytestmark = pytest.mark.system

BOS = 256
TOK = ByteTokenizer()


def stop_string_in_the_middle(text: str) -> str:
    """Two characters from the middle third of `text`, neither a replacement character."""
    for i in range(len(text) // 3, 2 * len(text) // 3):
        stop = text[i : i + 2]
        if len(stop) == 2 and "\ufffd" not in stop:
            return stop
    raise AssertionError(f"no stop string to choose in {text!r}")


def test_a_stop_string_cuts_the_text_and_the_tokens_and_frees_the_blocks(two_workers):
    prompt, max_tokens = "the stop string test: where does it end? ", 48

    async def scenario():
        async with AsyncClient(two_workers.address, timeout_s=120) as c:
            free = await c.generate(prompt, max_tokens=max_tokens, ignore_eos=True)
            stop = stop_string_in_the_middle(free.text)
            chunks = [
                ch
                async for ch in c.generate_stream(
                    prompt, max_tokens=max_tokens, ignore_eos=True, stop=[stop]
                )
            ]
            stopped = await c.generate(prompt, max_tokens=max_tokens, ignore_eos=True, stop=stop)
            for _ in range(1000):
                stats = await c.stats()
                if stats.running == 0 and all(w.free_blocks == w.num_blocks for w in stats.workers):
                    break
                await asyncio.sleep(0.01)
            return free, stop, chunks, stopped, stats

    free, stop, chunks, stopped, stats = asyncio.run(scenario())
    assert len(free.token_ids) == max_tokens and free.text == TOK.decode(free.token_ids)
    want_text = free.text[: free.text.index(stop)]
    k = next(n for n in range(1, max_tokens + 1) if stop in TOK.decode(free.token_ids[:n]))
    assert stopped.text == want_text and str(stopped.finish_reason) == "stop"
    assert stopped.token_ids == free.token_ids[:k] and k < max_tokens
    assert "".join(ch.text for ch in chunks) == want_text
    assert [t for ch in chunks for t in ch.token_ids] == list(free.token_ids[:k])
    assert str(chunks[-1].finish_reason) == "stop"
    assert stats.running == 0 and all(w.free_blocks == w.num_blocks for w in stats.workers)


def test_retain_ttl_s_lets_a_later_prompt_reuse_the_prefix(two_workers):
    shared = "a long shared system prompt that every turn starts with. " * 6

    def pair(tag: str, **first_kw):
        with Client(two_workers.address, timeout_s=120) as c:
            first = c.generate(f"{tag} {shared} first", max_tokens=4, **first_kw)
            second = c.generate(f"{tag} {shared} second", max_tokens=8)
        return first, second

    _, kept = pair("kept", retain_ttl_s=300)
    _, dropped = pair("dropped")
    assert kept.metrics.cached_prompt_tokens > 0
    assert dropped.metrics.cached_prompt_tokens == 0
    # The reused KV gives what a prefill from nothing gives.
    offline = generate_offline("tiny", [[BOS, *f"kept {shared} second".encode()]], max_tokens=8)
    assert list(kept.token_ids) == list(offline[0].token_ids)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"stop": ["x"] * 17}, "at most 16 stop strings"),
        ({"stop": ["ok", ""]}, "stop string 1 must be a non-empty string"),
        ({"stop": ["y" * 300]}, "stop string 0 has 300 characters"),
    ],
)
def test_bad_stop_strings_are_invalid_arguments(two_workers, kwargs, fragment):
    with Client(two_workers.address, timeout_s=60) as c, pytest.raises(InvalidArgument) as err:
        c.generate("x", max_tokens=4, **kwargs)
    assert fragment in str(err.value)
