"""The host-write policies between the device tier and the shared host arena (fake workers, one
fake store shared by them, as the arena is on a node): which finished blocks are written, that a
prefix one worker wrote is a host hit on another, and that greedy outputs stay identical under
forced eviction and preemption storms with every policy. ``step`` and ``drive`` check the core's
integrity after every step."""

from __future__ import annotations

import pytest
from sched_fakes import drive, step
from test_core_device_cache import SYSTEM, evict_cached, expected, make, prompts, submit

from scheduler_svc.config import CoreConfig
from scheduler_svc.fetch_cost import NOT_MEASURED, DeviceCosts
from scheduler_svc.request import GenerationLimits, Request, Sampling
from scheduler_svc.swaps import HOST_WRITE

BS = 4
HOST = dict(preemption="swap", min_swap_tokens=1, retain=True)


def run_on(core, fakes, wid: str, prompt: list[int], out: int = 6) -> Request:
    """`prompt` retained when it finishes, run to its end on worker `wid` alone."""
    req = submit(core, prompt, out=out, retain=True)
    for _ in range(200):  # an empty plan now and then: a pin or a commit is on its way
        if req.is_finished:
            break
        step(core, wid, fakes[wid])
    assert req.is_finished and req.worker_id == wid
    drive(core, fakes)  # its offload, if any, is committed
    return req


@pytest.mark.parametrize("host_write", HOST_WRITE)
def test_a_prefix_one_worker_wrote_is_a_host_hit_on_another(host_write):
    core, fakes = make(workers=("w0", "w1"), host_write=host_write, locality_max_waits=0, **HOST)
    host = fakes["w0"].host
    first = run_on(core, fakes, "w0", [*SYSTEM, 1, 2])
    if host_write == "selective":
        assert host.retained() == 0  # nothing of it was hit: it stays on w0's device only
        assert core.counters.offloaded_blocks == 0
        second = run_on(core, fakes, "w0", [*SYSTEM, 3, 4])  # a device hit of the system block
        assert second.device_cached_tokens == len(SYSTEM) // BS * BS
        assert second.output_ids == expected(second.prompt_ids, 6)
    shared = len(SYSTEM) // BS
    assert host.retained() >= shared
    other = run_on(core, fakes, "w1", [*SYSTEM, 5, 6])
    assert other.cached_prompt_tokens == shared * BS  # from the arena w0 wrote
    assert other.device_cached_tokens == 0 and other.swap_ins == 1
    assert other.output_ids == expected(other.prompt_ids, 6)
    assert first.output_ids == expected(first.prompt_ids, 6)


def test_selective_writes_only_the_blocks_that_were_hit():
    through, t_fakes = make(host_write="through", **HOST)
    selective, s_fakes = make(host_write="selective", **HOST)
    for core, fakes in ((through, t_fakes), (selective, s_fakes)):
        for p in prompts(4):
            run_on(core, fakes, "w0", p)
    # Through writes every full block of every request (its shared prefix once); selective
    # writes the system block, once, when the second request has hit it, and nothing else.
    assert s_fakes["w0"].host.retained() == len(SYSTEM) // BS
    assert selective.counters.offloaded_blocks == len(SYSTEM) // BS
    assert t_fakes["w0"].host.retained() > s_fakes["w0"].host.retained()


@pytest.mark.parametrize("host_write", HOST_WRITE)
def test_forced_eviction_at_every_step_keeps_outputs_identical(host_write):
    core, fakes = make(blocks=40, max_num_seqs=3, host_write=host_write, **HOST)
    reqs: list[Request] = []
    for _ in range(2):  # the second round's prompts arrive once the first's are written
        reqs += [submit(core, p, out=8, retain=True) for p in prompts(10)]
        for _ in range(5000):
            step(core, "w0", fakes["w0"])
            evict_cached(core, "w0")
            core.check_integrity()
            if not core.has_work("w0") and not core.has_host_ops:
                break
    assert all(r.is_finished for r in reqs)
    assert all(r.output_ids == expected(r.prompt_ids, 8) for r in reqs)
    assert core.counters.device_evicted_blocks > 0
    if host_write == "through":
        assert core.counters.reuse_hit_tokens > 0  # the host served what the device lost
    else:  # the device lost every block before it was hit: none was worth writing
        assert core.counters.offloaded_blocks == core.counters.reuse_hit_tokens == 0


@pytest.mark.parametrize("host_write", HOST_WRITE)
def test_a_preemption_storm_keeps_outputs_identical(host_write):
    core, fakes = make(blocks=24, max_num_seqs=6, policy="priority", host_write=host_write, **HOST)
    reqs = []
    for i, p in enumerate(prompts(14) * 2):
        reqs.append(
            core.submit(
                prompt_ids=p,
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=12),
                tenant="t",
                priority=-i,  # each newcomer outranks the running ones
                retain_ttl_s=0.0,
            )
        )
        step(core, "w0", fakes["w0"])
    drive(core, fakes)
    assert core.counters.swap_preemptions > 0
    assert all(r.output_ids == expected(r.prompt_ids, 12) for r in reqs)


def test_an_unknown_host_write_policy_is_refused():
    with pytest.raises(ValueError, match="host_write"):
        CoreConfig(host_write="around")


def test_a_host_hit_the_device_holds_is_shared_there_without_a_pin_or_swap_in():
    core, fakes = make(**HOST)
    first = run_on(core, fakes, "w0", [*SYSTEM, 1, 2])  # written through, and cached on w0
    again = submit(core, [*SYSTEM, 1, 2], retain=True)
    hit = (len(SYSTEM) + 2 - 1) // BS * BS  # every full block but the last token's
    assert again.status.name == "SWAPPED" and again.cached_prompt_tokens == hit  # at submit
    plans = drive(core, fakes)
    # w0's device holds all of it: no pin, no copy, no swap-in step; the last block computed.
    assert not any(p.swap_in for p in plans) and again.swap_ins == 0
    assert again.device_cached_tokens == again.cached_prompt_tokens == hit
    assert core.counters.host_hits_declined == 1 and core.counters.host_declined_tokens == 0
    assert core.counters.reuse_hit_tokens == 0  # the host served nothing
    assert again.output_ids == first.output_ids == expected(first.prompt_ids, 6)


def test_a_host_hit_is_fetched_for_what_the_device_lacks_only_when_that_pays():
    # A copy's latency (10 s) is paid once, a block prefills in 3 s: the whole hit of 5 blocks
    # is worth a fetch at submit (10 < 15 s), the 1 block the device lacks is not (10 > 3 s).
    latency = DeviceCosts(prefill_tokens_per_s=BS / 3, copy_latency_s=10.0, copy_bytes_per_s=1e9)
    for costs, fetched in ((NOT_MEASURED, True), (latency, False)):
        core, fakes = make(costs=costs, **HOST)
        prompt = [*SYSTEM, 1, 2]
        first = run_on(core, fakes, "w0", prompt)
        evict_cached(core, "w0", 3)  # the device keeps only the head of the chain
        kept = len(core.workers["w0"].allocator.match(first.hashes))
        again = submit(core, prompt, retain=True)
        assert again.status.name == "SWAPPED"  # the lookup at submit took the whole hit
        drive(core, fakes)
        assert kept == 4 and (again.swap_ins == 1) is fetched
        assert again.device_cached_tokens == kept * BS
        assert again.cached_prompt_tokens == ((len(prompt) - 1) // BS if fetched else kept) * BS
        assert again.output_ids == first.output_ids == expected(prompt, 6)
