"""Cancellation: of queued runs, of running async and `def` attempts (in this process and
from another one), of finished runs, and by the task itself."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from perdure import (
    Engine,
    RunCancelledError,
    RunContext,
    RunFailedError,
    RunNotFoundError,
    RunStatus,
)

from .apps.worker_app import build_engine
from .conftest import MakeEngine, WorkerProcesses
from .support import count, types, wait_for_status, wait_until


async def test_cancel_a_queued_run_it_never_runs(engine: Engine) -> None:
    ran: list[str] = []

    @engine.task(id="job")
    async def job(ctx: RunContext, name: str) -> str:
        ran.append(name)
        return name

    doomed = await job.trigger("doomed")
    run = await doomed.cancel("changed my mind")
    assert run.status is RunStatus.CANCELLED
    assert run.error is not None
    assert run.error.type == "RunCancelledError"
    assert run.error.message == "changed my mind"
    assert run.finished_at is not None

    async with engine:
        # A run triggered after it completes only once the worker has looked past the
        # cancelled one (same queue, earlier id).
        assert await (await job.trigger("after")).result(timeout=10) == "after"
        assert (await doomed.get()).status is RunStatus.CANCELLED
        assert types(await doomed.events()) == ["created", "cancelled"]
        with pytest.raises(RunCancelledError) as info:
            await doomed.result(timeout=10)
    assert ran == ["after"]
    assert isinstance(info.value, RunFailedError)
    assert info.value.error is not None
    assert info.value.error.message == "changed my mind"


async def test_cancel_a_delayed_run(engine: Engine) -> None:
    @engine.task(id="later")
    async def later(ctx: RunContext) -> None:
        return None

    handle = await later.trigger(None, delay=3600)
    assert (await handle.get()).status is RunStatus.DELAYED
    run = await handle.cancel()
    assert run.status is RunStatus.CANCELLED


async def test_cancel_a_running_async_run(engine: Engine) -> None:
    started = asyncio.Event()
    seen: list[str] = []

    @engine.task(id="long")
    async def long(ctx: RunContext) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("CancelledError")
            raise
        finally:
            seen.append(f"ctx.cancelled={ctx.cancelled.is_set()}")
        return "finished anyway"

    async with engine:
        handle = await long.trigger(None)
        await asyncio.wait_for(started.wait(), 10)
        assert (await handle.get()).status is RunStatus.RUNNING

        run = await handle.cancel("user pressed stop")
        assert run.status is RunStatus.CANCELLED
        await wait_until(lambda: len(seen) == 2, what="the task to observe the cancellation")
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        final = await handle.get()
        events = await handle.events()

    assert seen == ["CancelledError", "ctx.cancelled=True"]
    assert final.status is RunStatus.CANCELLED
    assert final.output is None
    assert final.error is not None
    assert final.error.message == "user pressed stop"
    assert final.attempt == 1
    assert types(events) == ["created", "attempt_started", "cancelled"]


async def test_cancelled_task_that_swallows_the_cancellation_stays_cancelled(
    engine: Engine,
) -> None:
    started = asyncio.Event()
    finished = asyncio.Event()

    @engine.task(id="stubborn")
    async def stubborn(ctx: RunContext) -> str:
        started.set()
        # Wrong, but the engine must not let this result land.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        finished.set()
        return "ignored"

    async with engine:
        handle = await stubborn.trigger(None)
        await asyncio.wait_for(started.wait(), 10)
        await handle.cancel()
        await asyncio.wait_for(finished.wait(), 10)
        await asyncio.sleep(0.05)  # let a (wrong) completion reach the database, if any
        run = await handle.get()
        events = await handle.events()
    assert run.status is RunStatus.CANCELLED
    assert run.output is None
    assert count(events, "completed") == 0


async def test_cancel_a_running_def_run_sets_ctx_cancelled(engine: Engine) -> None:
    started = threading.Event()
    observed: list[bool] = []

    @engine.task(id="blocking")
    def blocking(ctx: RunContext) -> str:
        started.set()
        observed.append(ctx.cancelled.wait_sync(10))
        return "after cancel"

    async with engine:
        handle = await blocking.trigger(None)
        await wait_until(started.is_set, what="the def task to start")
        await handle.cancel()
        await wait_until(lambda: bool(observed), what="the thread to see ctx.cancelled")
        await asyncio.sleep(0.05)  # its late return value must not land either
        run = await handle.get()
    assert observed == [True]
    assert run.status is RunStatus.CANCELLED
    assert run.output is None


async def test_cancel_a_finished_run_returns_it_unchanged(engine: Engine) -> None:
    @engine.task(id="done")
    async def done(ctx: RunContext) -> int:
        return 7

    async with engine:
        handle = await done.trigger(None)
        await handle.result(timeout=10)
        before = await handle.get()
        after = await handle.cancel()
        events = await handle.events()
    assert after == before
    assert after.status is RunStatus.COMPLETED
    assert after.output == 7
    assert types(events) == ["created", "attempt_started", "completed"]


async def test_cancel_twice_keeps_the_first_reason(engine: Engine) -> None:
    @engine.task(id="job")
    async def job(ctx: RunContext) -> None:
        return None

    handle = await job.trigger(None)
    await handle.cancel("first")
    second = await handle.cancel("second")
    assert second.status is RunStatus.CANCELLED
    assert second.error is not None
    assert second.error.message == "first"
    assert count(await handle.events(), "cancelled") == 1


async def test_cancel_unknown_run_raises_not_found(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError, match="run_nope"):
        await engine.cancel("run_nope")


async def test_task_raising_run_cancelled_error_is_cancelled(engine: Engine) -> None:
    @engine.task(id="self-cancel")
    async def self_cancel(ctx: RunContext) -> None:
        raise RunCancelledError("nothing left to do")

    async with engine:
        handle = await self_cancel.trigger(None)
        run = await handle.wait(timeout=10)
        events = await handle.events()
    assert run.status is RunStatus.CANCELLED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "RunCancelledError"
    assert run.error.message == "nothing left to do"
    assert types(events)[-1] == "cancelled"


async def test_cancel_from_another_engine_stops_the_attempt(
    make_engine: MakeEngine, shared_url: str
) -> None:
    worker = make_engine()
    started = asyncio.Event()
    stopped = asyncio.Event()

    @worker.task(id="long")
    async def long(ctx: RunContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    client = make_engine()
    async with worker:
        handle = await long.trigger(None)
        await asyncio.wait_for(started.wait(), 10)
        run = await client.cancel(handle.id)
        assert run.status is RunStatus.CANCELLED
        await asyncio.wait_for(stopped.wait(), 10)
        assert (await handle.get()).status is RunStatus.CANCELLED


async def test_cancel_from_another_process_reaches_the_task(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url)
    cancellable = client.get_task("cancellable")
    try:
        handle = await cancellable.trigger(None)
        worker_processes.start()
        await wait_until(
            lambda: worker_processes.started(handle.id, 1),
            timeout=20,
            what="the subprocess to start the run",
        )
        run = await client.cancel(handle.id, "stop from the test process")
        assert run.status is RunStatus.CANCELLED

        marker = worker_processes.markers / f"{handle.id}.stopped"
        await wait_until(marker.exists, timeout=5, what="the worker's task to be stopped")
        assert marker.read_text() == "CancelledError ctx.cancelled=True"
        final = await wait_for_status(client, handle.id, RunStatus.CANCELLED)
        assert final.output is None
        assert final.error is not None
        assert final.error.message == "stop from the test process"
        assert count(await client.events(handle.id), "completed") == 0
    finally:
        await client.shutdown()
