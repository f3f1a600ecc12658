"""TLS on the public listeners of a real deployment started through the launcher (as ``fastswitch
up --tls-cert/--tls-key``), with a self-signed certificate made here by openssl: the SDK with
the CA completes a request, a plaintext client and a client without the CA fail; the openai
client over https (httpx verify=CA) completes a chat completion; a half-given pair stops each
service's start with exit code 2 and one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from client import AsyncClient, Client, Unavailable
from client.tls import ssl_context
from fastswitch.deploy import Deployment, DeploymentConfig
from fastswitch.deploy.flags import Layout, child_specs

pytestmark = pytest.mark.system


def _self_signed(d: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the certificates of the TLS tests)")
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("tls")
    return {"server": _self_signed(d, "server"), "other": _self_signed(d, "other")}


@pytest.fixture(scope="module")
def tls_door(certs: dict[str, tuple[Path, Path]]) -> Iterator[Deployment]:
    cert, key = certs["server"]
    dep = Deployment(
        model="tiny",
        workers=1,
        port=0,
        http_port=0,
        device_kv_blocks=160,
        tls_cert=cert,
        tls_key=key,
    )
    dep.start()  # the launcher's own health waits and stats poll dial TLS with the cert as CA
    try:
        yield dep
    finally:
        dep.stop()
    assert dep.alive_pids() == []


async def test_the_sdk_with_the_ca_completes_a_request_over_tls(tls_door: Deployment) -> None:
    assert tls_door.tls_ca is not None
    async with AsyncClient(tls_door.address, tls_ca=tls_door.tls_ca) as c:
        done = await c.generate("hello over TLS", max_tokens=8)
    assert len(done.token_ids) == 8


def test_the_sync_client_and_the_env_ca(
    tls_door: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTSWITCH_TLS_CA", str(tls_door.tls_ca))
    with Client(tls_door.address, tls=True) as c:
        assert len(c.generate("hello", max_tokens=4).token_ids) == 4


async def test_a_plaintext_client_is_unavailable(tls_door: Deployment) -> None:
    async with AsyncClient(tls_door.address, timeout_s=10) as c:
        with pytest.raises(Unavailable):
            await c.generate("hello", max_tokens=4)


async def test_a_client_without_the_ca_is_unavailable(
    tls_door: Deployment, certs: dict[str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FASTSWITCH_TLS_CA", raising=False)
    async with AsyncClient(tls_door.address, timeout_s=10, tls=True) as c:  # system roots
        with pytest.raises(Unavailable):
            await c.generate("hello", max_tokens=4)
    async with AsyncClient(tls_door.address, timeout_s=10, tls_ca=certs["other"][0]) as c:
        with pytest.raises(Unavailable):
            await c.generate("hello", max_tokens=4)


async def test_openai_client_over_https_with_the_ca(tls_door: Deployment) -> None:
    assert tls_door.http_url.startswith("https://")
    async with openai.DefaultAsyncHttpxClient(verify=ssl_context(tls_door.tls_ca)) as http:
        api = openai.AsyncOpenAI(
            base_url=f"{tls_door.http_url}/v1", api_key="none", max_retries=0, http_client=http
        )
        done = await api.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6
        )
    assert done.usage is not None and done.usage.completion_tokens == 6
    assert done.choices[0].message.content


async def test_plain_http_to_the_https_door_fails(tls_door: Deployment) -> None:
    plain = tls_door.http_url.replace("https://", "http://")
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.HTTPError):
            resp = await http.get(f"{plain}/version")
            resp.raise_for_status()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "scheduler", "--tls-cert", "X.pem"], "--tls-cert needs --tls-key too"),
        (["serve", "scheduler", "--tls-key", "X.key"], "--tls-key needs --tls-cert too"),
        (["serve", "api", "--ssl-certfile", "X.pem"], "--ssl-certfile needs --ssl-keyfile too"),
        (["up", "--tls-key", "X.key"], "tls_cert and tls_key go together"),
    ],
)
def test_a_half_given_pair_exits_2_in_one_line(argv: list[str], expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastswitch", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


def test_the_launcher_passes_tls_to_the_scheduler_and_the_door(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "c.key", tmp_path / "ca.pem"
    cfg = DeploymentConfig(tls_cert=cert, tls_key=key, tls_ca=ca, http_port=8443)
    layout = Layout(tmp_path, "d", 50051, {"kvstore": 1, "scheduler": 2, "worker-0": 3},
                    http_port=8443, tls=True)  # fmt: skip
    specs = {s.name: s for s in child_specs(cfg, layout)}
    sched, door = specs["scheduler"].flags, specs["api"].flags
    assert sched[sched.index("--tls-cert") + 1] == str(cert)
    assert sched[sched.index("--tls-key") + 1] == str(key)
    assert door[door.index("--ssl-certfile") + 1] == str(cert)
    assert door[door.index("--ssl-keyfile") + 1] == str(key)
    assert door[door.index("--scheduler-tls-ca") + 1] == str(ca)
    assert specs["api"].health_target == "https://127.0.0.1:8443/version"
    assert specs["scheduler"].health_ca == specs["api"].health_ca == str(ca)
    plain = {s.name: s for s in child_specs(DeploymentConfig(http_port=8443),
                                            Layout(tmp_path, "d", 50051, layout.metrics_ports,
                                                   http_port=8443))}  # fmt: skip
    assert "--tls-cert" not in plain["scheduler"].flags
    assert plain["api"].health_target.startswith("http://") and plain["api"].health_ca is None


def test_an_unreadable_ca_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.pem: cannot read it"):
        AsyncClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")


QUICK = ["--workload", "fairness", "--duration", "0.3", "--rate", "20", "--no-progress"]
QUICK += ["--tenant-output-lens", "3", "3", "3", "--warmup", "0", "--wait-workers", "1"]


@pytest.mark.parametrize("door", [False, True], ids=["grpc", "https"])
def test_fastswitch_bench_with_tls_ca(
    tls_door: Deployment, door: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastswitch.bench import main

    monkeypatch.delenv("FASTSWITCH_TLS_CA", raising=False)
    target = tls_door.http_url if door else tls_door.address
    out = tmp_path / "run.json"
    rc = main(["run", "--target", target, *QUICK, "--tls-ca", str(tls_door.tls_ca),
               "--json", str(out)])  # fmt: skip
    assert rc == 0
    statuses = {r["status"] for r in json.loads(out.read_text())["requests"]}
    assert statuses == {"ok"}
