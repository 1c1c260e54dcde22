"""Sleeping tasks: a run waits (suspended, holding no slot) until `engine.wakeup(task,
unique_id, completed=... | failed=...)` or its timeout. The reference's webhook example."""

from __future__ import annotations

import pytest

from perdure import (
    DuplicateRunError,
    Engine,
    FinalizeInput,
    ManualClock,
    Parent,
    RunContext,
    RunNotFoundError,
    RunStatus,
    child,
)

from .conftest import MakeEngine
from .durable.support import advance
from .support import wait_for_status
from .trees.support import runs_of


async def test_a_sleeping_child_woken_by_a_webhook_completes_its_parent(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="wait_for_webhook", timeout=3600)

    def finalize(ctx: RunContext, data: FinalizeInput[str]) -> object:
        (result,) = data.children
        if not result.ok:
            raise RuntimeError(f"Webhook task failed: {result.error}")
        return result.output

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, entity_id: str) -> Parent[str]:
        return Parent(output="parent_output", children=[child(waiter, entity_id)])

    async with engine:
        handle = await parent.trigger("entity_id")
        waiting = await wait_for_status(engine, handle.id, RunStatus.WAITING_FOR_CHILDREN)
        (sleeper,) = await engine.children(handle.id)
        sleeper = await wait_for_status(engine, sleeper.id, RunStatus.SUSPENDED)
        woken = await engine.wakeup(waiter, "entity_id", completed="webhook_output")
        output = await handle.result(timeout=10)
        finished = await engine.get_run(sleeper.id)

    assert waiting.status is RunStatus.WAITING_FOR_CHILDREN
    assert sleeper.lease_owner is None  # a sleeping run holds no worker slot
    assert (woken.id, woken.task_id) == (sleeper.id, "wait_for_webhook")
    assert output == "webhook_output"
    assert finished.status is RunStatus.COMPLETED
    assert finished.output == "webhook_output"


async def test_a_wakeup_before_the_run_first_executes_is_kept(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="payment", timeout=3600)

    @engine.parent_task(id="checkout")
    def checkout(ctx: RunContext, order: str) -> Parent[None]:
        return Parent(children=[child(waiter, f"pay-{order}")])

    handle = await checkout.trigger("o-1")  # no worker yet
    direct = await waiter.trigger("pay-direct")
    await engine.wakeup(waiter, "pay-direct", completed={"paid": 3})
    async with engine:
        await wait_for_status(engine, handle.id, RunStatus.WAITING_FOR_CHILDREN)
        # The child's token was stored with the child run, before the child ever ran.
        await engine.wakeup(waiter, "pay-o-1", completed={"paid": 1})
        output = await handle.result(timeout=10)
        direct_output = await direct.result(timeout=10)

    assert direct_output == {"paid": 3}
    assert output["children"][0]["status"] == "completed"
    assert output["children"][0]["output"] == {"paid": 1}


async def test_wakeup_with_failed_fails_the_run(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="approval", timeout=3600)

    async with engine:
        handle = await waiter.trigger("request-7")
        await wait_for_status(engine, handle.id, RunStatus.SUSPENDED)
        await engine.wakeup(waiter, "request-7", failed="rejected by the approver")
        run = await handle.wait(timeout=10)

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error.retryable is False
    assert (
        run.error.message == "token sleep:approval:request-7 was failed: rejected by the approver"
    )


async def test_a_sleeping_run_not_woken_in_time_is_timed_out(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    waiter = engine.sleeping_task(id="webhook", timeout=60)

    async with engine:
        handle = await waiter.trigger("entity-1")
        await wait_for_status(engine, handle.id, RunStatus.SUSPENDED)
        advance(engine, clock, 61)
        run = await wait_for_status(engine, handle.id, RunStatus.TIMED_OUT)
        late = await engine.wakeup(waiter, "entity-1", completed="too late")

    assert run.error is not None
    assert run.error.type == "TaskTimeoutError"
    assert run.error.message == "sleeping task 'webhook' ('entity-1') was not woken within 60s"
    assert late.status is RunStatus.TIMED_OUT  # a late wake-up changes nothing
    assert late.output is None


async def test_duplicate_unique_id_is_refused_and_nothing_is_stored(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="webhook", timeout=3600)

    first = await waiter.trigger("entity-1")
    with pytest.raises(DuplicateRunError, match="'entity-1'"):
        await waiter.trigger("entity-1")
    assert [r.id for r in await runs_of(engine, "webhook")] == [first.id]

    async with engine:
        await engine.wakeup(waiter, "entity-1", completed="done")
        assert await first.result(timeout=10) == "done"
        # Unique for ever: a finished run still owns its id.
        with pytest.raises(DuplicateRunError):
            await waiter.trigger("entity-1")
        runs = await runs_of(engine, "webhook")

    assert [r.id for r in runs] == [first.id]


async def test_a_child_reusing_a_unique_id_fails_its_parent(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="webhook", timeout=3600)

    @engine.parent_task(id="parent")
    def parent(ctx: RunContext, entity: str) -> Parent[None]:
        return Parent(children=[child(waiter, entity)])

    async with engine:
        taken = await waiter.trigger("entity-1")
        handle = await parent.trigger("entity-1")
        run = await handle.wait(timeout=10)
        kids = await engine.children(handle.id)
        sleepers = await runs_of(engine, "webhook")

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1  # not retried: the id would be taken on every retry
    assert run.error is not None
    assert "wait token 'sleep:webhook:entity-1' already belongs to run" in run.error.message
    assert kids == []  # the child was not created
    assert [r.id for r in sleepers] == [taken.id]


async def test_parents_claiming_one_unique_id_together_fail_only_the_second(
    engine: Engine,
) -> None:
    """Both parents' waits are committed in one group; the taken id fails just one parent."""
    waiter = engine.sleeping_task(id="webhook", timeout=3600)

    @engine.parent_task(id="parent")
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(waiter, "entity-1")])

    async with engine:
        handles = await parent.batch_trigger([1, 2])
        runs = [
            await wait_for_status(
                engine, h.id, RunStatus.FAILED, RunStatus.WAITING_FOR_CHILDREN, timeout=10
            )
            for h in handles
        ]
        sleepers = await runs_of(engine, "webhook")

    failed = [r for r in runs if r.status is RunStatus.FAILED]
    waiting = [r for r in runs if r.status is RunStatus.WAITING_FOR_CHILDREN]
    assert (len(failed), len(waiting)) == (1, 1)
    assert failed[0].error is not None
    assert "wait token 'sleep:webhook:entity-1' already belongs to run" in failed[0].error.message
    assert [s.parent_id for s in sleepers] == [waiting[0].id]


async def test_wakeup_of_an_unknown_unique_id_raises_run_not_found(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="webhook", timeout=3600)
    with pytest.raises(RunNotFoundError, match="webhook:nobody"):
        await engine.wakeup(waiter, "nobody", completed=1)


async def test_waking_a_finished_run_returns_it_unchanged(engine: Engine) -> None:
    waiter = engine.sleeping_task(id="webhook", timeout=3600)

    async with engine:
        handle = await waiter.trigger("entity-1")
        await engine.wakeup("webhook", "entity-1", completed={"first": True})  # by task id
        run = await handle.wait(timeout=10)
        again = await engine.wakeup(waiter, "entity-1", completed={"second": True})
        failed = await engine.wakeup(waiter, "entity-1", failed="too late")

    assert run.status is RunStatus.COMPLETED
    assert run.output == {"first": True}
    for later in (again, failed):
        assert (later.id, later.status, later.output) == (run.id, run.status, run.output)
        assert later.finished_at == run.finished_at


async def test_a_sleeping_run_triggered_by_task_id_elsewhere_can_be_woken(
    make_engine: MakeEngine, shared_url: str
) -> None:
    worker = make_engine(shared_url)
    worker.sleeping_task(id="webhook", timeout=3600)
    client = make_engine(shared_url)  # defines no task: triggers through the catalog

    async with worker:
        handle = await client.trigger("webhook", "entity-9")
        await wait_for_status(client, handle.id, RunStatus.SUSPENDED)
        await client.wakeup("webhook", "entity-9", completed="from elsewhere")
        output = await handle.result(timeout=10)

    assert output == "from elsewhere"
