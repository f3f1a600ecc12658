"""The KV store lost at random moments, with answers that lag, a store that evicts on its own
(a small arena, eviction storms: the scheduler's host index goes stale), and workers that refuse
swaps until they registered again (and, in the second test, workers that die and come back): the
scheduler core against two fake workers sharing one fake store (sched_fakes.py), seeded. Every
request ends with the tokens an undisturbed run gives, the core agrees with itself after every
step, and at the end every device block is free and the last store holds no lease or
reservation.

This is what the real deployment does around a store restart (``host_agent.py``: answers from a
lost store count as failures; ``worker_svc/link.py``: swaps refused while the arena is not
mapped), without the processes, so many interleavings run in a second. Half the seeds schedule
asynchronously (each worker's next plan made before its running plan's result is in)."""

from __future__ import annotations

import itertools
import random
from collections import deque

import pytest
from sched_fakes import FakeHost, FakeWorker, next_token

from scheduler_svc.config import CoreConfig
from scheduler_svc.core import SchedulerCore
from scheduler_svc.host_ops import HostOp, HostOpKind
from scheduler_svc.plan import StepOutput, StepPlan
from scheduler_svc.policy import make_policy
from scheduler_svc.request import FinishReason, GenerationLimits, Request, Sampling
from scheduler_svc.workers import WorkerInfo

BS = 4
BLOCKS = 24
SHARED = [(13 * j) % 200 for j in range(14)]  # every prompt's first tokens: lookups hit


class LaggingAgent:
    """The host agent: takes the core's ops at once and answers a random share of them each
    tick; when the store is lost, the unanswered reserves and pins fail (they were
    sent to a store that is gone) and frees and releases are dropped."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pending: list[HostOp] = []

    def tick(self, core: SchedulerCore, host: FakeHost) -> int:
        self.pending += core.take_host_ops()
        ready = [op for op in self.pending if self.rng.random() < 0.5]
        self.pending = [op for op in self.pending if op not in ready]
        host.answer(core, ready)
        return len(ready)

    def store_lost(self, core: SchedulerCore) -> None:
        lost, self.pending = self.pending, []
        core.on_store_lost()
        for op in lost:
            if op.kind in (HostOpKind.RESERVE, HostOpKind.PIN):
                core.on_host_failed(op.seq, op.kind, "the KV store was lost meanwhile", op.ticket)


class RefusingWorker(FakeWorker):
    """A worker that refuses its plans' swaps for `refuse` steps (the arena of a restarted store
    not mapped yet): swap-outs come back not committed, swap-ins as errors, never started."""

    refuse = 0

    def run(self, plan: StepPlan) -> StepOutput:
        if self.refuse <= 0 or not (plan.swap_in or plan.swap_out):
            return super().run(plan)
        self.refuse -= 1
        return self.refusing(plan, {o.seq for o in [*plan.swap_in, *plan.swap_out]}, release=True)


def expected(prompt: list[int], n: int) -> list[int]:
    history = list(prompt)
    for _ in range(n):
        history.append(next_token(history))
    return history[len(prompt) :]


def scenario(seed: int, worker_kills: int = 0) -> tuple[SchedulerCore, FakeHost]:
    """Runs one seeded scenario to the end and checks it; returns the core and the last store."""
    rng = random.Random(seed)
    clock = itertools.count()
    ahead = rng.random() < 0.5  # asynchronous scheduling: one plan made ahead per worker
    core = SchedulerCore(
        CoreConfig(
            preemption="swap",
            min_swap_tokens=1,
            retain=True,
            preempt_margin=0,
            async_scheduling=ahead,
        ),
        make_policy(rng.choice(["vtc", "fcfs"])),
        eos_token_ids=[255],
        clock=lambda: next(clock) * 0.001,
        model_fingerprint="m",
        secret=b"s",
    )
    arena = rng.choice([12, 32, 10_000])  # host blocks: the small ones evict on every reserve
    host = FakeHost(capacity=arena)
    workers: dict[str, RefusingWorker] = {}
    infos: dict[str, WorkerInfo] = {}
    for wid in ("w0", "w1"):
        info = WorkerInfo(
            wid, num_blocks=BLOCKS, block_size=BS, block_bytes=100, max_model_len=4096
        )
        core.add_worker(info)
        infos[wid] = info
        workers[wid] = RefusingWorker(info, host, swap_delay=rng.randint(1, 3))
    agent = LaggingAgent(rng)
    sent: dict[str, deque[StepPlan]] = {wid: deque() for wid in workers}
    reqs: list[tuple[Request, list[int]]] = []
    to_submit = 24
    losses = 0
    kills = worker_kills
    for tick in range(20_000):
        if to_submit and rng.random() < 0.3:
            to_submit -= 1
            prompt = SHARED + [rng.randrange(200) for _ in range(rng.randint(1, 10))]
            out = rng.randint(3, 12)
            req = core.submit(
                prompt_ids=prompt,
                sampling=Sampling(),
                limits=GenerationLimits(max_tokens=out),
                tenant=rng.choice("abc"),
                retain_ttl_s=0.0 if rng.random() < 0.7 else None,  # most are retained turns
            )
            reqs.append((req, expected(prompt, out)))
        if losses < 3 and tick > 5 and rng.random() < 0.02:
            losses += 1
            agent.store_lost(core)
            core.check_integrity()
            host = FakeHost(capacity=arena)  # restarted: empty, knows no lease of the old one
            for w in workers.values():
                w.host = host
                w.refuse = rng.randint(0, 3)
        if kills and tick > 5 and rng.random() < 0.01:  # a worker dies and is restarted
            kills -= 1
            wid = rng.choice(sorted(workers))
            core.remove_worker(wid)
            dead = workers[wid]
            for _, kind, order in dead.in_flight:  # the store lets their leases expire
                dead.issued_on.get((kind, order.seq), host).release(order.lease_id)
            for plan in sent[wid]:  # ... and those of the swaps it was sent and never began
                for order in [*plan.swap_in, *plan.swap_out]:
                    host.release(order.lease_id)
            sent[wid].clear()
            core.check_integrity()
            info = infos[wid]
            core.add_worker(info)
            workers[wid] = RefusingWorker(info, host, swap_delay=rng.randint(1, 3))
        if rng.random() < 0.01:
            host.evict_some(rng.random())  # behind the scheduler's back
        progressed = agent.tick(core, host) > 0
        for wid, w in workers.items():
            pipe = sent[wid]
            while len(pipe) < (2 if ahead else 1):
                plan = core.schedule(wid)
                if plan is None:
                    break
                pipe.append(plan)
            if not pipe:
                continue
            progressed = True
            core.update_from_output(wid, w.run(pipe.popleft()))
            core.check_integrity()
        done = all(r.is_finished for r, _ in reqs)
        if not to_submit and done and not progressed and not agent.pending:
            break
    else:
        raise AssertionError("did not drain")
    for req, want in reqs:
        assert req.finish_reason is FinishReason.LENGTH, (req.request_id, req.finish_reason)
        assert list(req.output_ids) == want
    for wid in workers:
        slot = core.workers[wid]
        assert not slot.running, f"{wid} still holds {sorted(slot.running)}"
        assert slot.allocator.num_free == BLOCKS, f"{wid}: device blocks leaked"
    assert not host.reserved and not host.leases, "host memory leaked in the last store"
    return core, host


@pytest.mark.parametrize("seed", range(40))
def test_store_losses_at_random_moments_lose_and_leak_nothing(seed):
    scenario(seed)


def test_the_scenarios_do_meet_a_stale_host_index():
    """The store's own evictions reach the scheduler only as failed pins: the seeds above
    include such pins (each one recomputed, with the same tokens), and hits that the index
    served."""
    runs = [scenario(seed) for seed in range(40)]
    assert sum(host.stale_pins for _, host in runs) > 0
    assert sum(host.evictions for _, host in runs) > 0
    assert sum(core.counters.retained_hit_blocks for core, _ in runs) > 0


@pytest.mark.parametrize("seed", range(120))
def test_store_losses_and_worker_deaths_lose_and_leak_nothing(seed):
    """Workers die too (and are restarted empty) with reserves and pins in flight: a late
    answer to a swap given up is never taken for the request's next swap (seed 108 found it:
    an old reserve's blocks under a new swap-out's length, KV missing after the swap-in)."""
    scenario(seed, worker_kills=2)
