"""Dead letters: runs that ended `failed` (retries exhausted, a non-retryable error, or the
worker-lost cap) are listed by queue and task, replayed as new runs, and purged with their
history, leaving every other run alone."""

from __future__ import annotations

import pytest

from perdure import (
    ManualClock,
    NonRetryableError,
    RetryPolicy,
    RunContext,
    RunNotFoundError,
    RunStatus,
)

from .conftest import MakeEngine

LEASE = 10.0


async def test_dead_letters_are_listed_replayed_and_purged(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock, lease=LEASE, heartbeat=2, max_lost_leases=1)
    attempts: dict[str, int] = {}

    @engine.task(id="charge", queue="billing", retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def charge(ctx: RunContext, order: str) -> str:
        await ctx.step("reserve", lambda: f"reserved {order}")
        attempts[order] = attempts.get(order, 0) + 1
        raise RuntimeError(f"card declined for {order}")

    @engine.task(id="refund", queue="billing")
    async def refund(ctx: RunContext, order: str) -> str:
        raise NonRetryableError(f"{order} was never paid")

    @engine.task(id="ship", queue="billing")
    async def ship(ctx: RunContext, order: str) -> str:
        return f"shipped {order}"

    @engine.task(id="render", queue="media")
    async def render(ctx: RunContext, frame: int) -> int:
        return frame

    # A worker that claimed a run and died: with max_lost_leases=1 the first lost lease makes
    # the run a dead letter.
    lost = await render.trigger(7)
    storage = await engine.open()
    claimed = await storage.claim_runs("dead-worker", ["media"], ["render"], 1, LEASE, clock.time())
    assert [run.id for run in claimed] == [lost.id]
    clock.advance(LEASE + 1)
    await engine.run_maintenance()
    lost_run = await lost.get()
    assert lost_run.status is RunStatus.FAILED
    assert lost_run.error is not None
    assert lost_run.error.type == "WorkerLostError"

    async with engine:
        declined = await charge.trigger("order-1")
        unpaid = await refund.trigger("order-2")
        shipped = await ship.trigger("order-3")
        for handle in (declined, unpaid, shipped):
            await handle.wait(timeout=10)
        assert attempts == {"order-1": 3}  # retries exhausted
        queued = await ship.trigger("order-4", delay=3600)  # neither finished nor failed

        everything = await engine.dead_letters()
        assert [run.id for run in everything.runs] == [unpaid.id, declined.id, lost.id]
        billing = await engine.dead_letters(queue="billing")
        assert [run.id for run in billing.runs] == [unpaid.id, declined.id]
        by_task = await engine.dead_letters(task="charge")
        assert [(r.id, r.attempt) for r in by_task.runs] == [(declined.id, 3)]
        assert by_task.runs[0].error is not None
        assert by_task.runs[0].error.message == "card declined for order-1"
        assert (await engine.dead_letters(queue="billing", task="ship")).runs == []
        first_page = await engine.dead_letters(limit=2)
        assert len(first_page.runs) == 2
        assert first_page.next_cursor is not None

        # Replay: a new run with the same input, on the same queue.
        replayed = await engine.replay(lost.id)
        assert replayed.id != lost.id
        assert await replayed.result(timeout=10) == 7
        replay_run = await replayed.get()
        assert (replay_run.task_id, replay_run.input, replay_run.queue) == ("render", 7, "media")
        assert (await lost.get()).status is RunStatus.FAILED  # the dead letter stays

        # Purge by filter, then by id: only failed runs go, with their history and steps.
        storage = await engine.open()
        assert [step.name for step in await storage.load_steps(declined.id)] == ["reserve"]
        assert await engine.purge_dead_letters(queue="billing", task="charge") == 1
        assert await engine.purge_dead_letters(run_ids=[lost.id, shipped.id, queued.id]) == 1

        for gone in (declined, lost):
            with pytest.raises(RunNotFoundError):
                await gone.get()
            assert await storage.get_events(gone.id) == []
            assert await storage.load_steps(gone.id) == []
        assert len(await storage.get_events(unpaid.id)) > 0
        survivors = {r.id: r.status for r in (await engine.list_runs(limit=100)).runs}
        assert survivors == {
            unpaid.id: RunStatus.FAILED,
            shipped.id: RunStatus.COMPLETED,
            queued.id: RunStatus.DELAYED,
            replayed.id: RunStatus.COMPLETED,
        }
        assert [run.id for run in (await engine.dead_letters()).runs] == [unpaid.id]
        assert await engine.purge_dead_letters() == 1
        assert (await engine.dead_letters()).runs == []


async def test_replay_keeps_the_concurrency_key(make_engine: MakeEngine) -> None:
    """A replayed dead letter stays under its key's limit."""
    engine = make_engine()
    engine.queue("per-user", key_concurrency=1)

    @engine.task(id="sync", queue="per-user", retry=RetryPolicy(max_attempts=1))
    async def sync(ctx: RunContext, user: str) -> None:
        raise RuntimeError("upstream down")

    async with engine:
        failed = await sync.trigger("u7", concurrency_key="user-7", priority=3)
        await failed.wait(timeout=10)
        replayed = await engine.replay(failed.id)
        run = await replayed.wait(timeout=10)
    assert (run.concurrency_key, run.priority, run.input) == ("user-7", 3, "u7")
