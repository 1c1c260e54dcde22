"""Durable sleeps: a long sleep suspends the run and frees its worker slot, survives a worker
restart and resumes when due; a short one stays in process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from perdure import Engine, ManualClock, RunContext, RunStatus

from .conftest import MakeEngine
from .durable.support import (
    HOUR,
    Calls,
    advance,
    assert_contiguous,
    recorded,
    wait_suspended,
)
from .support import count


def define_sleeper(engine: Engine, calls: Calls) -> None:
    """The same task on every engine (as a redeployed worker would define it)."""

    @engine.task(id="durable-sleeper")
    async def sleeper(ctx: RunContext, name: str) -> str:
        await ctx.step("before", calls.hit, "before")
        await ctx.sleep(timedelta(hours=1))
        await ctx.step("after", calls.hit, "after")
        return f"{name} woke up"

    @engine.task(id="durable-quick")
    async def quick(ctx: RunContext, name: str) -> str:
        return f"{name} done"


async def test_long_sleep_frees_the_slot_and_resumes_after_a_worker_restart(
    make_engine: MakeEngine, shared_url: str, clock: ManualClock
) -> None:
    calls = Calls()
    first = make_engine(concurrency=1, clock=clock)
    define_sleeper(first, calls)
    async with first:
        sleeping = await first.trigger("durable-sleeper", "A")
        suspended = await wait_suspended(first, sleeping.id)
        # With one slot, B can only run if the sleeping run does not hold it.
        other = await first.trigger("durable-quick", "B")
        assert await other.result(timeout=10) == "B done"
        assert (await sleeping.get()).status is RunStatus.SUSPENDED
    assert suspended.lease_owner is None
    assert suspended.available_at is not None
    assert suspended.available_at.timestamp() == pytest.approx(clock.time() + HOUR)

    second = make_engine(concurrency=1, clock=clock)  # a new worker on the same database
    define_sleeper(second, calls)
    async with second:
        advance(second, clock, HOUR + 1)
        assert await second.handle(sleeping.id).result(timeout=10) == "A woke up"
        run = await second.get_run(sleeping.id)
        events = await second.events(sleeping.id)

    assert dict(calls) == {"before": 1, "after": 1}
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 2
    assert recorded(events, "sleep") == [(1, "sleep", "completed")]
    assert count(events, "suspended") == 1
    assert_contiguous(events)


async def test_run_is_not_resumed_before_its_wake_up_time(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    calls = Calls()
    engine = make_engine(clock=clock, poll_interval=0.02)
    define_sleeper(engine, calls)
    async with engine:
        handle = await engine.trigger("durable-sleeper", "A")
        await wait_suspended(engine, handle.id)
        advance(engine, clock, HOUR - 60)  # not due yet
        quick = await engine.trigger("durable-quick", "B")  # proves the worker kept claiming
        await quick.result(timeout=10)
        assert (await handle.get()).status is RunStatus.SUSPENDED
        advance(engine, clock, 61)
        assert await handle.result(timeout=10) == "A woke up"
    assert calls["after"] == 1


async def test_sleep_until_a_datetime_suspends_until_then(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    wake = datetime.fromtimestamp(clock.time(), UTC) + timedelta(days=2)

    @engine.task(id="durable-sleep-until")
    async def flow(ctx: RunContext) -> str:
        await ctx.sleep_until(wake)
        return "morning"

    async with engine:
        handle = await flow.trigger(None)
        run = await wait_suspended(engine, handle.id)
        assert run.available_at == wake
        advance(engine, clock, timedelta(days=2))
        assert await handle.result(timeout=10) == "morning"


async def test_short_sleep_stays_in_process_and_never_suspends(engine: Engine) -> None:
    statuses: list[RunStatus] = []

    @engine.task(id="durable-short-sleep")
    async def flow(ctx: RunContext) -> str:
        await ctx.sleep(0.05)
        statuses.append((await ctx.engine.get_run(ctx.run_id)).status)
        return "rested"

    async with engine:
        handle = await flow.trigger(None)
        assert await handle.result(timeout=10) == "rested"
        run = await handle.get()
        events = await handle.events()

    assert statuses == [RunStatus.RUNNING]
    assert run.attempt == 1
    assert count(events, "suspended") == 0
    assert recorded(events, "sleep") == [(0, "sleep", "completed")]
    assert_contiguous(events)
