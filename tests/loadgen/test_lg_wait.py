"""``fastswitch-bench --wait-workers N --wait-timeout S``: the bench waits until the scheduler
lists N joined workers (so a compose `bench` needs no worker health), and says clearly when they
do not join in time."""

from __future__ import annotations

import pytest

from client.loadgen.ready import wait_for_workers
from client.loadgen.runner import TargetError
from fastswitch.bench import main
from fastswitch.deploy import free_port

QUICK = ["--workload", "fairness", "--duration", "0.3", "--rate", "30", "--no-progress"]
QUICK += ["--tenant-output-lens", "3", "3", "3", "--warmup", "0"]


async def test_the_wait_ends_when_enough_workers_have_joined(lg_fake):
    addr, fake = lg_fake
    fake.workers = []
    seen: list[int] = []

    def on_wait(joined: int) -> None:
        seen.append(joined)
        if joined == 0:
            fake.workers = ["w-0"]  # one joins: not enough yet
        elif joined == 1:
            fake.workers = ["w-0", "w-1", "w-2"]

    joined = await wait_for_workers(addr, 2, 30, interval_s=0.01, on_wait=on_wait)
    assert joined == 3 and seen == [0, 1]


async def test_too_few_workers_time_out_with_the_count(lg_fake):
    addr, fake = lg_fake
    fake.workers = ["w-0"]
    with pytest.raises(TargetError, match=rf"--wait-workers 2: 1 of 2 workers joined {addr} "):
        await wait_for_workers(addr, 2, 0.3, interval_s=0.01)


async def test_an_unreachable_scheduler_is_polled_until_the_timeout():
    addr = f"127.0.0.1:{free_port()}"
    with pytest.raises(TargetError, match=r"0 of 1 workers joined .*last GetStats: UNAVAILABLE"):
        await wait_for_workers(addr, 1, 0.5, interval_s=0.05)


@pytest.mark.parametrize(("want", "timeout"), [(0, 1.0), (1, 0.0)])
async def test_bad_wait_arguments(want, timeout):
    with pytest.raises(ValueError, match="--wait-"):
        await wait_for_workers("127.0.0.1:1", want, timeout)


def test_cli_waits_then_runs(lg_fake, capsys):
    addr, fake = lg_fake
    fake.workers = ["w-0", "w-1"]
    assert main(["--target", addr, "--wait-workers", "2", *QUICK]) == 0
    captured = capsys.readouterr()
    assert f"2 workers joined {addr}" in captured.err
    assert "TTFT" in captured.out and fake.finished > 0


def test_cli_timeout_exits_3_before_any_request(lg_fake, capsys):
    addr, fake = lg_fake
    fake.workers = []
    rc = main(["--target", addr, "--wait-workers", "2", "--wait-timeout", "0.3", *QUICK])
    err = capsys.readouterr().err
    assert rc == 3 and "error: --wait-workers 2: 0 of 2 workers joined" in err
    assert "waiting for workers: 0 of 2 joined" in err and "Traceback" not in err
    assert fake.requests == []


def test_cli_rejects_a_negative_count(capsys):
    assert main(["--wait-workers", "-1", *QUICK]) == 2
    assert "--wait-workers must be >= 1, got -1" in capsys.readouterr().err
