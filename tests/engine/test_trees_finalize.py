"""A parent whose finalize task completes is completed in the same commit, with the task's
output: its body would only return it, so it is not claimed, replayed and finished again
(`docs/decisions.md`). A finalize task that does not complete wakes the parent as before
(`test_trees_parent.py`)."""

from __future__ import annotations

import asyncio
from typing import Any

from perdure import (
    Engine,
    FinalizeInput,
    Parent,
    RunContext,
    RunStatus,
    Task,
    child,
)

from .conftest import MakeEngine
from .durable.support import assert_contiguous
from .trees.support import Calls


def leaf_task(engine: Engine) -> Task[int, int]:
    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    return leaf


async def test_a_parent_completes_with_its_finalize_tasks_output_without_a_third_attempt(
    engine: Engine,
) -> None:
    calls = Calls()

    @engine.task(id="double")
    async def double(ctx: RunContext, n: int) -> int:
        return n * 2

    @engine.task(id="total")
    async def total(ctx: RunContext, data: FinalizeInput[int]) -> dict[str, Any]:
        return {"base": data.output, "sum": sum(c.output for c in data.children if c.ok)}

    @engine.parent_task(id="parent", finalize=total)
    def parent(ctx: RunContext, n: int) -> Parent[int]:
        calls.hit("parent")
        return Parent(output=n, children=[child(double, i) for i in range(n)])

    async with engine:
        handle = await parent.trigger(4)
        output = await handle.result(timeout=10)
        run = await handle.get()
        kids = await engine.children(handle.id)
        events = await handle.events()

    assert output == {"base": 4, "sum": 12}
    assert calls["parent"] == 1  # the plan ran once; its replay came from the record
    finalize_run = kids[-1]
    assert (finalize_run.task_id, finalize_run.status) == ("total", RunStatus.COMPLETED)
    assert (run.status, run.output, run.error) == (RunStatus.COMPLETED, output, None)
    assert run.attempt == 2  # ran, resumed for finalize; no attempt to return the output
    assert run.finished_at is not None
    assert finalize_run.finished_at is not None
    assert run.finished_at >= finalize_run.finished_at
    assert run.lease_owner is None
    assert run.available_at is None
    types = [e.type for e in events]
    assert types.count("attempt_started") == 2
    assert types[-2:] == ["children_settled", "completed"]
    assert events[-2].data["children"] == [{"child_run_id": finalize_run.id, "status": "completed"}]
    assert events[-1].data == {"status": "completed", "attempt": 2, "by": "finalize task"}
    assert_contiguous(events)


async def test_a_finalize_task_returning_none_completes_the_parent_with_none(
    engine: Engine,
) -> None:
    leaf = leaf_task(engine)

    @engine.task(id="nothing")
    async def nothing(ctx: RunContext, data: FinalizeInput[None]) -> None:
        return None

    @engine.parent_task(id="parent", finalize=nothing)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, n)])

    async with engine:
        handle = await parent.trigger(1)
        assert await handle.result(timeout=10) is None
        run = await handle.get()

    assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, None, 2)


async def test_completions_by_finalize_cascade_up_a_tree_of_parents(engine: Engine) -> None:
    """`outer`'s finalize task is itself a parent task (`inner`) with a finalize task; a
    sibling parent task (`side`) is one of `outer`'s children. When `inner`'s finalize task
    completes, `inner` completes, and so does `outer`, all in one commit."""

    leaf = leaf_task(engine)

    @engine.task(id="sum")
    async def sum_task(ctx: RunContext, data: FinalizeInput[Any]) -> int:
        return sum(c.output for c in data.children if c.ok)

    @engine.parent_task(id="side", finalize=sum_task)
    def side(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, n), child(leaf, n)])

    @engine.parent_task(id="inner", finalize=sum_task)
    def inner(ctx: RunContext, data: FinalizeInput[None]) -> Parent[None]:
        return Parent(children=[child(leaf, c.output * 10) for c in data.children if c.ok])

    @engine.parent_task(id="outer", finalize=inner)
    def outer(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(side, n), child(leaf, n)])

    async with engine:
        handle = await outer.trigger(3)
        output = await handle.result(timeout=10)
        outer_run = await handle.get()
        side_run, _, inner_run = await engine.children(handle.id)
        events = await handle.events()

    assert output == 60 + 30  # inner's children: side's 6 and the leaf's 3, times ten
    assert (side_run.status, side_run.output, side_run.attempt) == (RunStatus.COMPLETED, 6, 2)
    assert (inner_run.status, inner_run.output, inner_run.attempt) == (RunStatus.COMPLETED, 90, 2)
    assert (outer_run.status, outer_run.attempt) == (RunStatus.COMPLETED, 2)
    assert inner_run.finished_at == outer_run.finished_at  # the same commit
    assert events[-1].type == "completed"
    assert_contiguous(events)


def define_tree(engine: Engine) -> Task[int, int]:
    """`root(n)`: children leaf(0..5); finalize `inner`, a parent task whose children are
    ten times each result and whose finalize task sums them: 10 * (n + ... + n + 5)."""
    leaf = leaf_task(engine)

    @engine.task(id="sum")
    async def sum_task(ctx: RunContext, data: FinalizeInput[Any]) -> int:
        return sum(c.output for c in data.children if c.ok)

    @engine.parent_task(id="inner", finalize=sum_task)
    def inner(ctx: RunContext, data: FinalizeInput[None]) -> Parent[None]:
        return Parent(children=[child(leaf, c.output * 10) for c in data.children if c.ok])

    @engine.parent_task(id="root", finalize=inner)
    def root(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, n + i) for i in range(6)])

    return root


async def test_two_workers_completing_finalize_tasks_at_once_complete_each_parent_once(
    make_engine: MakeEngine, shared_url: str
) -> None:
    """Two engines on one database, few slots each, so that finalize tasks of different
    trees complete in concurrent commits: every root completes once, with its output."""
    first, second = make_engine(shared_url, concurrency=4), make_engine(shared_url, concurrency=4)
    root = define_tree(first)
    define_tree(second)

    async with first, second:
        handles = await root.batch_trigger(list(range(20)))
        outputs = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        runs = [await h.get() for h in handles]
        histories = [await h.events() for h in handles]
        statuses = await (await first.open()).count_by_status()

    assert outputs == [10 * (6 * n + 15) for n in range(20)]
    assert {(r.status, r.attempt) for r in runs} == {(RunStatus.COMPLETED, 2)}
    for events in histories:
        assert [e.type for e in events].count("completed") == 1
        assert_contiguous(events)
    # Per tree: the root, 6 leaves, inner, its 6 leaves and its sum task.
    assert statuses == {"completed": 20 * (1 + 6 + 1 + 6 + 1)}
