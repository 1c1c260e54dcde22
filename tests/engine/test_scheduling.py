"""When runs start: delay and run_at (on a ManualClock), TTL expiry, and priority."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from perdure import Engine, ManualClock, RunContext, RunFailedError, RunStatus

from .conftest import MakeEngine
from .support import types, wait_for_status


async def test_delayed_run_starts_only_when_due(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    started_at: list[float] = []

    @engine.task(id="reminder")
    async def reminder(ctx: RunContext, text: str) -> str:
        started_at.append(clock.time())
        return text

    async with engine:
        handle = await reminder.trigger("stand up", delay=timedelta(minutes=5))
        run = await handle.get()
        assert run.status is RunStatus.DELAYED
        assert run.available_at is not None
        assert (run.available_at - run.created_at).total_seconds() == pytest.approx(300)

        # The worker is idle and has looked at the queue: an undelayed run goes through
        # while the delayed one keeps waiting.
        assert await (await reminder.trigger("now")).result(timeout=10) == "now"
        clock.advance(299)
        engine.wake()
        assert await (await reminder.trigger("still now")).result(timeout=10) == "still now"
        assert (await handle.get()).status is RunStatus.DELAYED

        clock.advance(2)
        engine.wake()
        assert await handle.result(timeout=10) == "stand up"
        run = await handle.get()
        events = await handle.events()

    assert started_at[-1] == clock.time()
    assert run.status is RunStatus.COMPLETED
    assert run.started_at is not None
    assert (run.started_at - run.created_at).total_seconds() == pytest.approx(301)
    assert types(events) == ["created", "attempt_started", "completed"]
    assert events[0].data["status"] == "delayed"


async def test_run_at_schedules_a_run_at_a_time(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="at")
    async def at(ctx: RunContext) -> str:
        return "ran"

    when = datetime.fromtimestamp(clock.time(), UTC) + timedelta(hours=1)
    async with engine:
        handle = await at.trigger(None, run_at=when)
        run = await handle.get()
        assert run.status is RunStatus.DELAYED
        assert run.available_at == when
        clock.set(when)
        engine.wake()
        assert await handle.result(timeout=10) == "ran"


async def test_run_at_in_the_past_runs_now(engine: Engine) -> None:
    @engine.task(id="at")
    async def at(ctx: RunContext) -> str:
        return "ran"

    async with engine:
        handle = await at.trigger(None, run_at=datetime(2000, 1, 1, tzinfo=UTC))
        assert await handle.result(timeout=10) == "ran"


async def test_ttl_expires_a_run_nobody_started(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    ran: list[int] = []

    @engine.task(id="flash-sale")
    async def flash_sale(ctx: RunContext, n: int) -> int:
        ran.append(n)
        return n

    handle = await flash_sale.trigger(1, ttl=timedelta(seconds=10))
    run = await handle.get()
    assert run.status is RunStatus.QUEUED
    assert run.expires_at is not None
    assert (run.expires_at - run.created_at).total_seconds() == pytest.approx(10)

    clock.advance(9)
    await engine.run_maintenance()
    assert (await handle.get()).status is RunStatus.QUEUED  # not yet

    clock.advance(2)
    await engine.run_maintenance()
    run = await handle.get()
    events = await handle.events()
    assert run.status is RunStatus.EXPIRED
    assert run.started_at is None
    assert run.finished_at is not None
    assert run.error is not None
    assert "ttl" in run.error.message
    assert types(events) == ["created", "expired"]
    with pytest.raises(RunFailedError):
        await handle.result(timeout=1)

    # A worker that starts later does not run it.
    async with engine:
        assert await (await flash_sale.trigger(2)).result(timeout=10) == 2
        assert (await handle.get()).status is RunStatus.EXPIRED
    assert ran == [2]


async def test_ttl_expires_a_run_whose_queue_has_no_worker(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock, queues=["elsewhere"])

    @engine.task(id="unserved", queue="nobody-serves-this")
    async def unserved(ctx: RunContext) -> None:
        return None

    @engine.task(id="served", queue="elsewhere")
    async def served(ctx: RunContext) -> None:
        return None

    async with engine:
        handle = await unserved.trigger(None, ttl=60)
        clock.advance(61)
        await engine.run_maintenance()
        run = await wait_for_status(engine, handle.id, RunStatus.EXPIRED)
        assert run.started_at is None
        assert types(await handle.events()) == ["created", "expired"]


async def test_ttl_does_not_apply_once_the_run_started(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="quick")
    async def quick(ctx: RunContext) -> str:
        return "done"

    async with engine:
        handle = await quick.trigger(None, ttl=5)
        assert await handle.result(timeout=10) == "done"
        clock.advance(60)
        await engine.run_maintenance()
        run = await handle.get()
    assert run.status is RunStatus.COMPLETED


async def test_delayed_run_with_ttl_shorter_than_the_delay_expires(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="never")
    async def never(ctx: RunContext) -> None:
        return None

    handle = await never.trigger(None, delay=120, ttl=60)
    clock.advance(61)
    await engine.run_maintenance()
    assert (await handle.get()).status is RunStatus.EXPIRED


async def test_higher_priority_runs_start_first(make_engine: MakeEngine) -> None:
    engine = make_engine(concurrency=1)
    order: list[str] = []

    @engine.task(id="job")
    async def job(ctx: RunContext, name: str) -> None:
        order.append(name)

    handles = [
        await job.trigger("p0", priority=0),
        await job.trigger("p10-first", priority=10),
        await job.trigger("p5", priority=5),
        await job.trigger("p-1", priority=-1),
        await job.trigger("p10-second", priority=10),
    ]
    async with engine:
        for handle in handles:
            await handle.result(timeout=10)

    assert order == ["p10-first", "p10-second", "p5", "p0", "p-1"]
