"""The writes that end an attempt (its buffered events, its suspension, its outcome) survive a
stop that lands while they are under way and a value that does not serialize: the run ends
recorded, its slot comes back, and shutdown returns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from perdure import Engine, InvalidOptionError, RunContext, RunHandle, RunStatus
from perdure.engine.worker import Worker
from perdure.storage import Storage

from .conftest import MakeEngine
from .support import wait_for_status, wait_until


def hold_event_writes(storage: Storage) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the flush of progress/log events wait, once entered, until `release` is set."""
    entered, release = asyncio.Event(), asyncio.Event()
    append_events = storage.append_events

    async def held(*args: Any, **kwargs: Any) -> bool:
        entered.set()
        await release.wait()
        return await append_events(*args, **kwargs)

    storage.append_events = held  # type: ignore[method-assign]
    return entered, release


async def shut_down(engine: Engine, grace: float, timeout: float = 10) -> None:
    """Shut `engine` down, failing the test if that takes longer than `timeout`; a hung
    shutdown is unstuck by hand so that the test's teardown does not hang too."""
    worker = engine._worker  # pyright: ignore[reportPrivateUsage]
    shutdown = asyncio.ensure_future(engine.shutdown(grace))
    done, _ = await asyncio.wait([shutdown], timeout=timeout)
    if done:
        shutdown.result()
        return
    assert worker is not None
    for attempt in list(worker.active.values()):
        attempt.done.set()
    await asyncio.wait_for(shutdown, 10)
    raise AssertionError("engine.shutdown() hung")


async def chatty_run_flushing(engine: Engine) -> tuple[Worker, RunHandle[Any], asyncio.Event]:
    """A started worker whose run returned and is now flushing its progress, held there until
    the returned event is set: (the worker, the run, that event)."""

    @engine.task(id="chatty")
    async def chatty(ctx: RunContext) -> str:
        ctx.progress({"pct": 100})
        return "done"

    entered, release = hold_event_writes(await engine.open())
    await engine.start()
    worker = engine._worker  # pyright: ignore[reportPrivateUsage]
    assert worker is not None
    handle = await chatty.trigger(None)
    await asyncio.wait_for(entered.wait(), 10)
    return worker, handle, release


async def test_a_shutdown_during_the_last_event_flush_still_records_the_outcome(
    make_engine: MakeEngine, shared_url: str
) -> None:
    engine = make_engine()
    worker, handle, release = await chatty_run_flushing(engine)

    shutdown = asyncio.ensure_future(shut_down(engine, grace=0))
    await wait_until(lambda: worker._stopping, what="the stop")  # pyright: ignore[reportPrivateUsage]
    await asyncio.sleep(0.05)  # the grace (0 s) is over: the stop reaches the attempt
    release.set()
    await asyncio.wait_for(shutdown, 20)

    run = await make_engine().get_run(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "done"


async def test_a_cancel_during_the_last_event_flush_frees_the_slot(engine: Engine) -> None:
    worker, handle, release = await chatty_run_flushing(engine)

    await engine.cancel(handle.id)
    await wait_for_status(engine, handle.id, RunStatus.CANCELLED)
    release.set()

    await wait_until(lambda: not worker.active, what="the attempt's slot back")
    assert (await engine.get_run(handle.id)).status is RunStatus.CANCELLED  # cancel wins
    await shut_down(engine, grace=1)


async def test_progress_that_does_not_serialize_fails_where_it_is_reported(
    engine: Engine,
) -> None:
    @engine.task(id="stamps")
    async def stamps(ctx: RunContext) -> str:
        try:
            ctx.progress({"at": datetime.now(UTC)})
        except InvalidOptionError as exc:
            return f"refused: {exc.option}"
        return "accepted"

    async with engine:
        handle = await stamps.trigger(None)
        assert await handle.result(timeout=10) == "refused: data"


async def test_metadata_that_does_not_serialize_leaves_the_outcome_recorded(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine()

    @engine.task(id="stamps")
    async def stamps(ctx: RunContext) -> str:
        ctx.metadata["at"] = datetime.now(UTC)  # written at the attempt's end: refused there
        return "done"

    async with engine:
        handle = await stamps.trigger(None)
        assert await handle.result(timeout=10) == "done"
        assert "at" not in (await engine.get_run(handle.id)).metadata
    assert f"could not record progress/metadata of {handle.id}" in caplog.text
    assert "'ctx.metadata'" in caplog.text


async def test_shutdown_waits_for_a_suspension_being_written(
    make_engine: MakeEngine, shared_url: str
) -> None:
    engine = make_engine()

    @engine.task(id="sleeper")
    async def sleeper(ctx: RunContext) -> str:
        await ctx.sleep(3600)
        return "woke"

    storage = await engine.open()
    suspend = storage.suspend
    entered = asyncio.Event()

    async def slow_suspend(*args: Any, **kwargs: Any) -> bool:
        entered.set()
        await asyncio.sleep(0.5)  # a slow round trip, still under way when shutdown begins
        return await suspend(*args, **kwargs)

    storage.suspend = slow_suspend  # type: ignore[method-assign]
    await engine.start()
    handle = await sleeper.trigger(None)
    await asyncio.wait_for(entered.wait(), 10)
    await shut_down(engine, grace=0)

    run = await make_engine().get_run(handle.id)
    assert run.status is RunStatus.SUSPENDED
    assert run.lease_owner is None
