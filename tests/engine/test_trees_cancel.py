"""Subtree cancellation: a parent that is cancelled or fails cancels every unfinished run
below it, at any depth, in the same transaction; running attempts observe `ctx.cancelled`."""

from __future__ import annotations

import asyncio
import contextlib

from perdure import (
    Engine,
    FinalizeInput,
    ManualClock,
    Parent,
    RunContext,
    RunStatus,
    Task,
    child,
)
from perdure.engine.durable import Suspend, current_context

from .conftest import MakeEngine
from .support import wait_for_status, wait_until
from .trees.support import Gate, runs_of, subtree, wait_running


class Slow:
    """`slow(n)` runs until stopped. `started` gets `n` when its body starts, `seen` once the
    attempt was stopped with `ctx.cancelled` set (the engine also cancels the coroutine)."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.seen: list[int] = []

    async def wait_started(self, n: int) -> None:
        await wait_until(lambda: len(self.started) >= n, what=f"{n} slow bodies to start")


def define_slow(engine: Engine, slow_state: Slow) -> Task[int, int]:
    seen = slow_state.seen

    @engine.task(id="slow")
    async def slow(ctx: RunContext, n: int) -> int:
        slow_state.started.append(n)
        try:
            await asyncio.sleep(30)
        finally:
            if ctx.cancelled.is_set():
                seen.append(n)
        return n

    return slow


async def test_cancelling_a_parent_cancels_children_and_grandchildren_at_once(
    engine: Engine,
) -> None:
    state = Slow()
    seen = state.seen
    slow = define_slow(engine, state)

    @engine.parent_task(id="mid")
    def mid(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(slow, i) for i in range(n)])

    @engine.parent_task(id="top")
    def top(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(mid, n), child(slow, 99)])

    async with engine:
        handle = await top.trigger(3)
        await state.wait_started(4)
        cancelled = await handle.cancel("user asked")
        tree = await subtree(engine, handle.id)  # read at once: no worker cycle in between
        await wait_until(lambda: len(seen) == 4, what="4 attempts to observe ctx.cancelled")
        later = await subtree(engine, handle.id)

    assert cancelled.status is RunStatus.CANCELLED
    assert [(r.task_id, r.status) for r in tree] == [
        ("mid", RunStatus.CANCELLED),
        ("slow", RunStatus.CANCELLED),
        ("slow", RunStatus.CANCELLED),
        ("slow", RunStatus.CANCELLED),
        ("slow", RunStatus.CANCELLED),
    ]
    for run in tree:
        assert run.error is not None
        assert run.error.message == "an ancestor run was cancelled: user asked"
    assert sorted(seen) == [0, 1, 2, 99]
    # The stopped attempts' late results did not land.
    assert [r.status for r in later] == [RunStatus.CANCELLED] * 5
    assert all(r.output is None for r in later)


async def test_cancelling_a_parent_waiting_for_finalize_cancels_the_finalize_task(
    engine: Engine,
) -> None:
    gate = Gate()

    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="combine")
    async def combine(ctx: RunContext, data: FinalizeInput[None]) -> int:
        await gate.wait()
        return 0

    @engine.parent_task(id="parent", finalize=combine)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, n)])

    async with engine:
        handle = await parent.trigger(1)
        await gate.wait_entered(1)
        await wait_for_status(engine, handle.id, RunStatus.WAITING_FOR_FINALIZE)
        await handle.cancel()
        kids = await engine.children(handle.id)
        gate.open()

    assert [(k.task_id, k.status) for k in kids] == [
        ("leaf", RunStatus.COMPLETED),  # finished runs stay as they were
        ("combine", RunStatus.CANCELLED),
    ]


async def test_a_cancelled_child_is_a_settled_result_for_finalize(engine: Engine) -> None:
    state = Slow()
    slow = define_slow(engine, state)

    @engine.task(id="quick")
    async def quick(ctx: RunContext, n: int) -> int:
        return n

    def finalize(ctx: RunContext, data: FinalizeInput[None]) -> list[str]:
        return [c.status.value for c in data.children]

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(quick, n), child(slow, n)])

    async with engine:
        handle = await parent.trigger(5)
        await state.wait_started(1)
        (running,) = await wait_running(engine, "slow", 1)
        await engine.cancel(running.id)
        output = await handle.result(timeout=10)

    assert output == ["completed", "cancelled"]


async def test_a_parent_that_fails_cancels_its_unfinished_descendants(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    """A parent fails while its children run when its worker dies between creating them and
    suspending, once too often (max_lost_leases=1): the children must not run on orphaned."""
    engine = make_engine(clock=clock, max_lost_leases=1)
    state = Slow()
    seen = state.seen
    slow = define_slow(engine, state)

    @engine.task(id="fan-out")
    async def fan_out(ctx: RunContext, n: int) -> int:
        results = await slow.batch_trigger_and_wait(list(range(n)))
        return len(results)

    handle = await fan_out.trigger(2)
    storage = await engine.open()
    # A worker claims the parent with a short lease and runs its body up to the point where
    # the children are committed, then dies before it could suspend the parent.
    (claimed,) = await storage.claim_runs(
        "doomed-worker", ["default"], ["fan-out"], 1, 1.0, clock.time()
    )

    async def doomed_attempt() -> None:
        ctx = RunContext(engine, claimed, "doomed-worker")
        current_context.set(ctx)
        with contextlib.suppress(Suspend):  # the worker would suspend now; it died instead
            await fan_out.fn(ctx, 2)

    await asyncio.create_task(doomed_attempt())

    async with engine:
        await state.wait_started(2)
        clock.advance(2.0)  # the parent's lease expires; the children's are renewed
        await engine.run_maintenance()
        parent = await handle.get()
        children = await engine.children(handle.id)
        await wait_until(lambda: len(seen) == 2, what="the children to observe ctx.cancelled")
        slow_runs = await runs_of(engine, "slow")

    assert parent.status is RunStatus.FAILED
    assert parent.error is not None
    assert parent.error.type == "WorkerLostError"
    assert [c.status for c in children] == [RunStatus.CANCELLED] * 2
    for c in children:
        assert c.error is not None
        assert c.error.message == "the parent run failed: its worker was lost"
    assert sorted(seen) == [0, 1]
    assert [r.status for r in slow_runs] == [RunStatus.CANCELLED] * 2
