"""The load generator's HTTP client (client/loadgen/http_client.py) against the byte-level mock
door: keep-alive reuse, the connection cap, connections closed by either side at any moment,
and failures that name their cause."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from mock_door import MockDoor, split

from client.loadgen.http_client import HttpClient, HttpError
from fastswitch.deploy import free_port

BODY = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]


async def answer(http: HttpClient) -> tuple[int, bytes]:
    async with http.request("POST", "/v1/completions", json_body={"k": 1}) as resp:
        return resp.status, await resp.read()


async def test_sequential_requests_share_one_connection_and_bodies_come_whole():
    async with MockDoor(BODY) as door:
        http = HttpClient(door.url)
        try:
            got = [await answer(http) for _ in range(4)]
            status, raw = await http.get("/health")
        finally:
            await http.aclose()
    assert got == [(200, b"".join(BODY))] * 4 and door.seen == [{"k": 1}] * 4
    assert status == 200 and b'"workers": 2' in raw
    assert door.connections == 1


async def test_a_response_left_early_closes_its_connection():
    async with MockDoor(split(b"".join(BODY), 4)) as door:
        http = HttpClient(door.url)
        try:
            async with http.request("POST", "/x", json_body={}) as resp:
                async for _ in resp.pieces():
                    break  # one piece, then away: the rest of the answer must not leak
            assert await answer(http) == (200, b"".join(BODY))
        finally:
            await http.aclose()
    assert door.connections == 2


async def test_connections_the_server_closes_after_each_answer_are_not_reused():
    async with MockDoor(BODY, close_after=1) as door:
        http = HttpClient(door.url)
        try:
            for _ in range(3):
                assert (await answer(http))[0] == 200
                await asyncio.sleep(0.01)  # the close is reported while the connection idles
        finally:
            await http.aclose()
    assert door.connections == 3


async def test_a_reused_connection_closed_as_the_request_came_is_retried_once():
    async with MockDoor(BODY, hang_up_on=2) as door:
        http = HttpClient(door.url)
        try:
            assert await answer(http) == (200, b"".join(BODY))
            assert await answer(http) == (200, b"".join(BODY))  # hung up, then a fresh one
        finally:
            await http.aclose()
    assert door.connections == 2 and len(door.seen) == 2


async def test_a_fresh_connection_that_hangs_up_fails_without_a_retry():
    async with MockDoor(BODY, hang_up_on=1) as door:
        http = HttpClient(door.url)
        try:
            with pytest.raises(HttpError, match="closed the connection"):
                await answer(http)
        finally:
            await http.aclose()
    assert door.connections == 1


async def test_an_answer_cut_mid_body_is_an_http_error():
    async with MockDoor(BODY, cut_after_pieces=1) as door:
        http = HttpClient(door.url)
        try:
            with pytest.raises(HttpError, match="mid-answer"):
                await answer(http)
        finally:
            await http.aclose()


async def test_at_most_max_connections_are_open():
    async with MockDoor(BODY) as door:
        http = HttpClient(door.url, max_connections=2)
        try:
            got = await asyncio.gather(*(answer(http) for _ in range(6)))
        finally:
            await http.aclose()
    assert all(g[0] == 200 for g in got) and door.connections == 2


async def test_no_server_and_bad_urls():
    http = HttpClient(f"http://127.0.0.1:{free_port()}", connect_timeout_s=1)
    try:
        with pytest.raises(HttpError, match=r"cannot connect to 127\.0\.0\.1"):
            await http.get("/health")
    finally:
        await http.aclose()
    for url in ("ftp://x", "http://", "127.0.0.1:80"):
        with pytest.raises(ValueError, match="not an http"):
            HttpClient(url)
    with pytest.raises(ValueError, match="max_connections"):
        HttpClient("http://127.0.0.1:1", max_connections=0)


def test_under_uvloop_too():
    async def go() -> tuple[int, bytes]:
        async with MockDoor(BODY) as door:
            http = HttpClient(door.url)
            try:
                await answer(http)
                return await answer(http)
            finally:
                await http.aclose()

    assert uvloop.run(go()) == (200, b"".join(BODY))
