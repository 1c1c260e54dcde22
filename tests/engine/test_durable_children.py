"""Child waits: `trigger_and_wait` / `batch_trigger_and_wait` start children once (a replay
never triggers them again), suspend the parent, and return `RunResult`s in input order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from perdure import (
    Engine,
    NonRetryableError,
    PerdureError,
    RetryPolicy,
    RunContext,
    RunResult,
    RunStatus,
    Task,
)

from .conftest import MakeEngine
from .durable.support import (
    Calls,
    assert_contiguous,
    wait_for_event,
)
from .support import count, wait_for_status

NO_RETRY = RetryPolicy(max_attempts=1)


class Square(BaseModel):
    n: int
    square: int


def define_square(engine: Engine) -> Task[int, Square]:
    @engine.task(id="durable-square", retry=NO_RETRY)
    async def square(ctx: RunContext, n: int) -> Square:
        # Later inputs finish first: results must still come back in input order.
        await asyncio.sleep(0.01 * max(0, 4 - n))
        if n < 0:
            raise NonRetryableError(f"negative input {n}")
        return Square(n=n, square=n * n)

    return square


def summary(result: RunResult[Square]) -> Any:
    if result.ok:
        assert isinstance(result.output, Square)  # rehydrated to the child's output type
        return result.output.square
    assert result.error is not None
    return (result.status.value, result.error.type, result.error.message)


async def test_trigger_and_wait_returns_the_child_result_and_frees_the_parent_slot(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(concurrency=1)  # the child can only run if the parent let go
    square = define_square(engine)
    executions = Calls()

    @engine.task(id="durable-parent")
    async def parent(ctx: RunContext, n: int) -> list[Any]:
        executions.hit("parent")
        ok = await square.trigger_and_wait(n)
        failed = await square.trigger_and_wait(-n)
        return [summary(ok), summary(failed), ok.run_id]

    async with engine:
        handle = await parent.trigger(3)
        ok_square, failed, child_id = await handle.result(timeout=10)
        children = (await engine.list_runs(parent_id=handle.id)).runs
        child = await engine.get_run(child_id)
        events = await handle.events()

    assert ok_square == 9
    assert failed == ["failed", "NonRetryableError", "negative input -3"]  # through JSON
    assert executions["parent"] == 3  # first run + one resume per child
    assert len(children) == 2  # each child created once, whatever the replays
    assert child.parent_id == handle.id
    assert child.root_id == handle.id
    assert child.status is RunStatus.COMPLETED
    # One `children_recorded` event per trigger_and_wait: a batch of one child.
    assert [
        (e.data["batch"], [(c["position"], c["name"]) for c in e.data["children"]])
        for e in events
        if e.type == "children_recorded"
    ] == [(0, [(0, "durable-square")]), (1, [(1, "durable-square")])]
    assert count(events, "suspended") == 2
    assert count(events, "resumed") == 2
    assert_contiguous(events)


async def test_batch_trigger_and_wait_returns_results_in_input_order(engine: Engine) -> None:
    square = define_square(engine)
    executions = Calls()

    @engine.task(id="durable-batch-parent")
    async def parent(ctx: RunContext, ns: list[int]) -> list[Any]:
        executions.hit("parent")
        results = await square.batch_trigger_and_wait(ns)
        return [summary(r) for r in results]

    async with engine:
        handle = await parent.trigger([1, 2, -3, 4, 0])
        output = await handle.result(timeout=10)
        children = (await engine.list_runs(parent_id=handle.id)).runs
        events = await handle.events()

    assert output == [1, 4, ["failed", "NonRetryableError", "negative input -3"], 16, 0]
    assert executions["parent"] == 2
    assert sorted(c.input for c in children) == [-3, 0, 1, 2, 4]
    assert count(events, "children_recorded") == 1  # the batch, one event
    [batch] = [e.data for e in events if e.type == "children_recorded"]
    assert sorted(c["child_run_id"] for c in batch["children"]) == sorted(c.id for c in children)
    assert count(events, "resumed") == 1  # woken once, when the whole batch settled
    assert_contiguous(events)


async def test_nested_children_carry_parent_and_root_ids(engine: Engine) -> None:
    square = define_square(engine)

    @engine.task(id="durable-middle")
    async def middle(ctx: RunContext, n: int) -> str | None:
        result = await square.trigger_and_wait(n)
        return result.run_id

    @engine.task(id="durable-top")
    async def top(ctx: RunContext, n: int) -> list[str | None]:
        result = await middle.trigger_and_wait(n)
        assert result.output is not None
        return [result.run_id, result.output]

    async with engine:
        handle = await top.trigger(2)
        middle_id, leaf_id = await handle.result(timeout=10)
        assert middle_id is not None
        assert leaf_id is not None
        middle_run = await engine.get_run(middle_id)
        leaf = await engine.get_run(leaf_id)

    assert (middle_run.parent_id, middle_run.root_id) == (handle.id, handle.id)
    assert (leaf.parent_id, leaf.root_id) == (middle_id, handle.id)
    assert leaf.output == {"n": 2, "square": 4}


async def test_gather_over_trigger_and_wait_is_correct_one_child_at_a_time(
    engine: Engine,
) -> None:
    square = define_square(engine)

    @engine.task(id="durable-gather-children")
    async def parent(ctx: RunContext) -> list[Any]:
        results = await asyncio.gather(square.trigger_and_wait(2), square.trigger_and_wait(3))
        return [summary(r) for r in results]

    async with engine:
        handle = await parent.trigger(None)
        assert await handle.result(timeout=10) == [4, 9]
        children = (await engine.list_runs(parent_id=handle.id)).runs
        events = await handle.events()

    assert sorted(c.input for c in children) == [2, 3]  # never triggered twice
    # One `children_recorded` event per trigger_and_wait (a batch of one child), in the
    # order the two records committed.
    assert sorted(
        (e.data["batch"], [(c["position"], c["name"]) for c in e.data["children"]])
        for e in events
        if e.type == "children_recorded"
    ) == [(0, [(0, "durable-square")]), (1, [(1, "durable-square")])]
    assert_contiguous(events)


async def test_trigger_and_wait_outside_a_task_body_raises_a_clear_error(
    engine: Engine,
) -> None:
    square = define_square(engine)
    with pytest.raises(PerdureError, match=r"trigger_and_wait must be called inside a task body"):
        await square.trigger_and_wait(2)
    with pytest.raises(PerdureError, match=r"batch_trigger_and_wait must be called inside"):
        await square.batch_trigger_and_wait([2])
    with pytest.raises(PerdureError, match=r"trigger_and_wait_sync must be called inside"):
        square.trigger_and_wait_sync(2)


async def test_a_cancelled_child_resumes_its_parent_with_a_failed_result(
    engine: Engine,
) -> None:
    @engine.task(id="durable-waiting-child")
    async def waiting(ctx: RunContext) -> str:
        await ctx.wait_for_token(await ctx.create_token())
        return "never"

    @engine.task(id="durable-cancel-parent")
    async def parent(ctx: RunContext) -> list[Any]:
        result = await waiting.trigger_and_wait(None)
        assert result.error is not None
        return [result.ok, result.status.value, result.error.type, result.output]

    async with engine:
        handle = await parent.trigger(None)
        await wait_for_event(engine, handle.id, "suspended")
        [child] = (await engine.list_runs(parent_id=handle.id)).runs
        await wait_for_status(engine, child.id, RunStatus.SUSPENDED)
        await engine.cancel(child.id, "not needed")
        assert await handle.result(timeout=10) == [False, "cancelled", "RunCancelledError", None]
