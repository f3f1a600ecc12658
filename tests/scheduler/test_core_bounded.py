"""The core's tables hold what is in flight, never what was served: after rounds of requests
with faults (a worker killed and re-joining, the store lost), once every stream has ended and
its request is forgotten, each table is as small as after the first round (``core.sizes``, what
the memory debug aid logs; docs/failures.md, "Memory"). The host index is a picture of the
arena: bounded by the arena's blocks, not by the requests served."""

from __future__ import annotations

import itertools

from sched_fakes import FakeHost, FakeWorker, drive, step

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.policy import make_policy
from scheduler_svc.request import GenerationLimits, Sampling
from scheduler_svc.workers import WorkerInfo

PER_REQUEST = (
    *("by_id", "by_seq", "live_tenants", "waiting", "resident"),
    *("host_ops", "offloads", "deferred", "stale_swaps"),
)


def _info(wid: str) -> WorkerInfo:
    return WorkerInfo(wid, num_blocks=14, block_size=4, block_bytes=100, max_model_len=4096)


def test_tables_stay_bounded_over_rounds_with_faults():
    clock = itertools.count()
    core = SchedulerCore(
        CoreConfig(preemption="swap", min_swap_tokens=1, preempt_margin=0, retain=True),
        make_policy("vtc"),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
    )
    arena = 64
    host = FakeHost(capacity=arena)
    fakes = {}
    for wid in ("w0", "w1"):
        core.add_worker(_info(wid))
        fakes[wid] = FakeWorker(_info(wid), host)
    after_round = []
    for round_ in range(6):
        reqs = [
            core.submit(
                prompt_ids=[(round_ * 53 + i * 37 + j * 11) % 200 for j in range(6 + i % 5)],
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=12),
                tenant=("a", "b", "c")[i % 3],
                retain_ttl_s=0.0 if i % 2 else None,
            )
            for i in range(10)
        ]
        for _ in range(6):
            step(core, "w0", fakes["w0"])
            step(core, "w1", fakes["w1"])
        core.remove_worker("w1")  # killed mid-run: its requests go back to the queue...
        if round_ % 2:
            core.on_store_lost()  # ...and the store restarts empty
            host = FakeHost(capacity=arena)
            fakes["w0"].host = host
        core.add_worker(_info("w1"))  # ...and it joins again, with an empty device
        fakes["w1"] = FakeWorker(_info("w1"), host)
        drive(core, fakes)
        assert all(r.is_finished for r in reqs)
        for r in reqs:  # every stream ended: the frontend forgets its request
            core.forget(r.request_id)
        core.check_integrity()
        after_round.append(core.sizes())
    for sizes in after_round:
        assert {k: sizes[k] for k in PER_REQUEST} == dict.fromkeys(PER_REQUEST, 0), sizes
        assert sizes["workers"] == 2 and sizes["tallies"] <= 3 and sizes["salts"] <= 3
        assert sizes.pop("host_index") <= arena
    assert after_round[-1] == after_round[0]
