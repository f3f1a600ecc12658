"""The link's check of a step's swaps against the KV store before the step runs: swaps whose lease
a store lifetime since ended granted are refused alone (their copies would write into, or read
from, the restarted store's arena), and an unreachable arena refuses every swap."""

from __future__ import annotations

from typing import Any, cast

import pytest

from worker_svc.link import SchedulerLink, _with_refused
from worker_svc.plan import (
    BlockAppend,
    BlockRun,
    RunCopy,
    SeqStart,
    StepPlan,
    StepResult,
    SwapIn,
    SwapOut,
    WorkerHello,
)
from worker_svc.store_client import lease_instance


class FakeConnection:
    """A StoreConnection whose arena belongs to store lifetime `instance`."""

    def __init__(self, instance: str, *, reachable: bool = True) -> None:
        self.instance = instance
        self.reachable = reachable
        self.stub = None

    async def ensure_fresh(self) -> bool:
        return self.reachable

    def take_replacement(self) -> None:
        return None


def link(conn: FakeConnection) -> SchedulerLink:
    hello = WorkerHello("w0", "m", 8, 4, 64, 128, "cpu", "", 256)
    # The check runs before any step: no executor and no scheduler are needed.
    return SchedulerLink("unused", hello, cast(Any, None), on_state=print, store=cast(Any, conn))


def plan() -> StepPlan:
    copy = (RunCopy(0, 0, 1),)
    return StepPlan(
        step_id=3,
        start=(SeqStart(seq=1, position=4, blocks=(BlockRun(0, 1),)), SeqStart(seq=2)),
        append=(BlockAppend(1, (BlockRun(1, 1),)),),
        swap_in=(SwapIn(1, copy, lease_id="old:p-1"), SwapIn(2, copy, lease_id="new:p-2")),
        swap_out=(SwapOut(3, copy, lease_id="old:r-3"), SwapOut(4, copy, lease_id="new:r-4")),
        decode=(5,),
    )


def test_lease_ids_name_the_store_lifetime() -> None:
    assert lease_instance("a1b2:r-ff") == "a1b2"


@pytest.mark.asyncio
async def test_swaps_of_a_restarted_stores_leases_are_refused_alone() -> None:
    kept, refused = await link(FakeConnection("new"))._prepare_store(plan())
    assert [o.seq for o in kept.swap_in] == [2] and [o.seq for o in kept.swap_out] == [4]
    assert [s.seq for s in kept.start] == [2] and kept.append == () and kept.decode == (5,)
    assert refused is not None
    result = _with_refused(StepResult(step_id=3), refused)
    assert result.swap_out_failed == (3,) and [e.seq for e in result.errors] == [1]


@pytest.mark.asyncio
async def test_swaps_of_the_current_store_run() -> None:
    only_new = plan()
    only_new = StepPlan(
        step_id=3, swap_in=only_new.swap_in[1:], swap_out=only_new.swap_out[1:], decode=(5,)
    )
    kept, refused = await link(FakeConnection("new"))._prepare_store(only_new)
    assert kept == only_new and refused is None


@pytest.mark.asyncio
async def test_an_unreachable_arena_refuses_every_swap() -> None:
    kept, refused = await link(FakeConnection("new", reachable=False))._prepare_store(plan())
    assert kept.swap_in == () and kept.swap_out == () and kept.decode == (5,)
    assert refused is not None and len(refused.swap_in) == 2 and len(refused.swap_out) == 2
