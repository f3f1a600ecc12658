"""The internal plane's guard (servekit/planes.py) against real in-process gRPC servers: the
secret read once, TCP listeners refused without it, the server interceptor (UNAUTHENTICATED
before any handler runs, health open), the client side sending it on every kind of call, and
mutual TLS with certificates made here by openssl."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servekit.planes import (
    DENIED,
    SECRET_METADATA,
    InternalPlane,
    TlsFiles,
    add_internal_flags,
    default_internal_address,
    plane_from_args,
    read_secret,
)
from servekit.service import GrpcService

SECRET = "0123456789abcdef-secret"
UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"


# ---------------------------------------------------------------- the secret and the rule


def test_read_secret_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n")
    assert read_secret(str(path), {}) == SECRET
    assert read_secret(str(path), {"FASTSWITCH_DEPLOYMENT_SECRET": "other-secret-000000"}) == SECRET
    assert read_secret(None, {"FASTSWITCH_DEPLOYMENT_SECRET": SECRET}) == SECRET
    assert read_secret(None, {}) is None
    assert read_secret(None, {"FASTSWITCH_DEPLOYMENT_SECRET": ""}) is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("short", ">= 16 characters"), ("with a space in the middle", "printable ASCII")],
)
def test_a_bad_secret_is_refused_without_showing_it(tmp_path: Path, text, fragment) -> None:
    path = tmp_path / "secret"
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment) as info:
        read_secret(str(path), {})
    assert text not in str(info.value)
    with pytest.raises(ValueError, match="cannot read it"):
        read_secret(str(tmp_path / "missing"), {})


def test_tcp_internal_listeners_need_a_secret_or_tls(tmp_path: Path) -> None:
    open_plane = InternalPlane()
    open_plane.check_listener("unix:///tmp/x.sock", "--internal-listen")  # the file system guards
    with pytest.raises(ValueError, match=r"^--internal-listen 0\.0\.0\.0:1 is TCP: .* secret"):
        open_plane.check_listener("0.0.0.0:1", "--internal-listen")
    InternalPlane(secret=SECRET).check_listener("0.0.0.0:1", "--internal-listen")
    tls = TlsFiles(tmp_path / "c", tmp_path / "k", tmp_path / "ca")
    InternalPlane(tls=tls).check_listener("0.0.0.0:1", "--internal-listen")
    assert SECRET not in repr(InternalPlane(secret=SECRET))
    assert default_internal_address("d1", "scheduler") == "unix:///tmp/fastswitch-d1-scheduler.sock"


def test_flags_build_the_plane(tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_internal_flags(p, {})
    args = p.parse_args([])
    assert plane_from_args(args, {}) == InternalPlane()
    assert plane_from_args(args, {"FASTSWITCH_DEPLOYMENT_SECRET": SECRET}).secret == SECRET
    with pytest.raises(ValueError, match="go as one"):
        plane_from_args(p.parse_args(["--internal-tls-cert", "c.pem"]), {})
    with pytest.raises(ValueError, match=r"--internal-tls-cert .*cannot read it"):
        plane_from_args(p.parse_args([f"--internal-tls-{x}={tmp_path}/{x}" for x in _PARTS]), {})


_PARTS = ("cert", "key", "ca")


# ---------------------------------------------------------------- the interceptor


class Calls:
    """The handlers' side: how many calls reached them."""

    def __init__(self) -> None:
        self.count = 0

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.count += 1
        return b"echo:" + request

    async def stream(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
        self.count += 1
        async for request in requests:
            yield b"echo:" + request


async def _server(listen: str, plane: InternalPlane, calls: Calls) -> GrpcService:
    service = GrpcService(
        "planes-test",
        listen=listen,
        metrics_port=None,
        interceptors=plane.server_interceptors(),
        credentials=plane.server_credentials(listen),
    )
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(calls.unary),
            "Stream": grpc.stream_stream_rpc_method_handler(calls.stream),
        },
    )
    service.add(lambda _, server: server.add_generic_rpc_handlers((handler,)), None, "test.Echo")
    await service.start()
    service.set_serving(True)
    return service


async def _echo(channel: grpc.aio.Channel) -> tuple[bytes, list[bytes]]:
    one = await channel.unary_unary(UNARY)(b"a", timeout=5)
    call = channel.stream_stream(STREAM)()
    await call.write(b"b")
    first = await call.read()
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    return one, [first]


async def _denied(channel: grpc.aio.Channel, metadata: tuple = ()) -> None:
    for method in (UNARY, STREAM):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            if method == UNARY:
                await channel.unary_unary(method)(b"a", timeout=5, metadata=metadata)
            else:
                call = channel.stream_stream(method)(metadata=metadata, timeout=5)
                await call.write(b"b")
                await call.read()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert info.value.details() == DENIED


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_only_calls_with_the_secret_reach_a_handler(tmp_path: Path, transport) -> None:
    plane = InternalPlane(secret=SECRET)
    listen = "127.0.0.1:0" if transport == "tcp" else f"unix://{tmp_path}/s.sock"
    calls = Calls()
    service = await _server(listen, plane, calls)
    target = listen if transport == "unix" else f"127.0.0.1:{service.bound_port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            await _denied(channel)
            await _denied(channel, ((SECRET_METADATA, SECRET[:-1] + "X"),))
            await _denied(channel, ((SECRET_METADATA, SECRET[:8]),))
            assert calls.count == 0, "a denied call reached its handler"
            assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING  # open
        async with plane.channel(target) as channel:
            assert await _echo(channel) == (b"echo:a", [b"echo:b"])
        assert calls.count == 2
        async with InternalPlane(secret="another-secret-123456").channel(target) as channel:
            await _denied(channel)
    finally:
        await service.stop(0)


async def test_without_a_secret_nothing_is_checked() -> None:
    calls = Calls()
    service = await _server("127.0.0.1:0", InternalPlane(), calls)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}") as channel:
            assert await _echo(channel) == (b"echo:a", [b"echo:b"])
    finally:
        await service.stop(0)


# ---------------------------------------------------------------- mutual TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)  # fmt: skip


def _make_cert(d: Path, ca: str, name: str) -> TlsFiles:
    (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
             cwd=d)  # fmt: skip
    return TlsFiles(d / f"{name}.pem", d / f"{name}.key", d / f"{ca}.pem")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsFiles]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the certificates of the TLS tests)")
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    return {
        "server": _make_cert(d, "ca", "server"),
        "client": _make_cert(d, "ca", "client"),
        "rogue": _make_cert(d, "rogue-ca", "rogue"),
    }


async def test_mutual_tls_admits_only_peers_of_the_ca(certs: dict[str, TlsFiles]) -> None:
    calls = Calls()
    service = await _server("127.0.0.1:0", InternalPlane(tls=certs["server"]), calls)
    target = f"127.0.0.1:{service.bound_port}"
    try:
        async with InternalPlane(tls=certs["client"]).channel(target) as channel:
            assert await _echo(channel) == (b"echo:a", [b"echo:b"])
        assert calls.count == 2
        rogue = certs["rogue"]
        # A client certificate of another CA (trusting the right CA), and no TLS at all.
        mixed = TlsFiles(rogue.cert, rogue.key, certs["client"].ca)
        plain = grpc.aio.insecure_channel(target)
        for channel in (InternalPlane(tls=mixed).channel(target), plain):
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary(UNARY)(b"a", timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert calls.count == 2
    finally:
        await service.stop(0)


async def test_tls_and_the_secret_together(certs: dict[str, TlsFiles]) -> None:
    calls = Calls()
    server = InternalPlane(secret=SECRET, tls=certs["server"])
    service = await _server("127.0.0.1:0", server, calls)
    target = f"127.0.0.1:{service.bound_port}"
    try:
        async with InternalPlane(tls=certs["client"]).channel(target) as channel:
            await _denied(channel)
        async with InternalPlane(secret=SECRET, tls=certs["client"]).channel(target) as channel:
            assert await _echo(channel) == (b"echo:a", [b"echo:b"])
    finally:
        await service.stop(0)
