"""Graceful shutdown: running attempts are told (`ctx.shutdown`), get `grace` seconds to
finish, and are released back to the queue for another worker otherwise."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from perdure import Engine, RetryPolicy, Run, RunContext, RunStatus, Task

from .conftest import MakeEngine
from .support import types, wait_until


def define_tasks(engine: Engine, started: asyncio.Event | None = None) -> None:
    @engine.task(id="polite")
    async def polite(ctx: RunContext) -> str:
        if started is not None:
            started.set()
        await ctx.shutdown.wait()
        return f"wrapped up, cancelled={ctx.cancelled.is_set()}"

    @engine.task(id="stubborn")
    async def stubborn(ctx: RunContext) -> str:
        if started is not None:
            started.set()
        if ctx.attempt == 1:
            await asyncio.sleep(30)  # ignores ctx.shutdown
        return f"finished on attempt {ctx.attempt}"


async def test_task_finishing_within_grace_completes(
    make_engine: MakeEngine, shared_url: str
) -> None:
    engine = make_engine()
    started = asyncio.Event()
    define_tasks(engine, started)

    await engine.start()
    handle = await engine.trigger("polite")
    await asyncio.wait_for(started.wait(), 10)
    await engine.shutdown(grace=5)

    reader = make_engine()
    run = await reader.get_run(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "wrapped up, cancelled=False"
    assert types(await reader.events(handle.id)) == ["created", "attempt_started", "completed"]


async def test_task_outliving_grace_is_released_and_completed_by_another_worker(
    make_engine: MakeEngine, shared_url: str
) -> None:
    first = make_engine()
    started = asyncio.Event()
    define_tasks(first, started)

    await first.start()
    handle = await first.trigger("stubborn")
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await first.shutdown(grace=0.2)
    assert loop.time() - begun < 5

    second = make_engine()
    define_tasks(second)
    released = await second.get_run(handle.id)
    assert released.status is RunStatus.QUEUED
    assert released.lease_owner is None
    assert types(await second.events(handle.id)) == [
        "created",
        "attempt_started",
        "lease_released",
    ]

    async with second:
        assert await second.handle(handle.id).result(timeout=10) == "finished on attempt 2"
        run = await second.get_run(handle.id)
        events = await second.events(handle.id)

    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 2
    assert run.lost_leases == 0
    assert types(events) == [
        "created",
        "attempt_started",
        "lease_released",
        "attempt_started",
        "completed",
    ]


async def test_shutdown_sets_ctx_shutdown_for_def_tasks(
    make_engine: MakeEngine, shared_url: str
) -> None:
    engine = make_engine()
    started = threading.Event()

    @engine.task(id="sync-polite")
    def sync_polite(ctx: RunContext) -> str:
        started.set()
        return f"shutdown={ctx.shutdown.wait_sync(10)}"

    await engine.start()
    handle = await sync_polite.trigger(None)
    await wait_until(started.is_set, what="the def task to start")
    await engine.shutdown(grace=5)

    reader = make_engine()
    run = await reader.get_run(handle.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "shutdown=True"


async def test_shutdown_with_nothing_running_is_quick_and_idempotent(engine: Engine) -> None:
    define_tasks(engine)
    await engine.start()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    await engine.shutdown()
    await engine.shutdown()
    assert loop.time() - begun < 2
    assert engine.worker_id is None


async def test_run_worker_returns_when_stop_is_set(engine: Engine) -> None:
    define_tasks(engine)
    stop = asyncio.Event()
    worker = asyncio.create_task(engine.run_worker(stop))
    await wait_until(lambda: engine.worker_id is not None, what="the worker to start")
    stop.set()
    await asyncio.wait_for(worker, 10)
    assert engine.worker_id is None


async def test_a_release_at_shutdown_does_not_use_up_a_retry(
    make_engine: MakeEngine, shared_url: str
) -> None:
    def build(engine: Engine, started: asyncio.Event) -> None:
        @engine.task(id="one-retry", retry=RetryPolicy(max_attempts=2, base_delay=0))
        async def one_retry(ctx: RunContext) -> str:
            started.set()
            if ctx.attempt == 1:
                await asyncio.sleep(30)  # released at shutdown
            if ctx.attempt == 2:
                raise RuntimeError("the first real failure")
            return f"ok on attempt {ctx.attempt}"

    first, started = make_engine(), asyncio.Event()
    build(first, started)
    await first.start()
    handle = await first.trigger("one-retry")
    await asyncio.wait_for(started.wait(), 10)
    await first.shutdown(grace=0.1)

    second = make_engine()
    build(second, asyncio.Event())
    async with second:
        # One failure out of max_attempts=2: the run gets its retry.
        assert await second.handle(handle.id).result(timeout=10) == "ok on attempt 3"


async def test_runs_of_a_claim_in_flight_at_shutdown_go_back_to_the_queue(
    make_engine: MakeEngine, shared_url: str
) -> None:
    # A claim committed in the database whose answer is still on its way when shutdown
    # begins: its runs must be handed back, not stranded as "running" until their lease
    # expires (and then counted as lost).
    def build(engine: Engine) -> Task[None, str]:
        @engine.task(id="noop")
        async def noop(ctx: RunContext) -> str:
            return "done"

        return noop

    first = make_engine()
    noop = build(first)
    storage = await first.open()
    claim_runs = storage.claim_runs
    answered = asyncio.Event()
    claimed: list[str] = []

    async def slow_answer(*args: Any, **kwargs: Any) -> list[Run]:
        runs = await claim_runs(*args, **kwargs)
        if runs:
            claimed.extend(run.id for run in runs)
            answered.set()
            await asyncio.sleep(1)  # the answer is late; shutdown begins meanwhile
        return runs

    storage.claim_runs = slow_answer  # type: ignore[method-assign]
    handle = await noop.trigger(None)
    await first.start()
    await asyncio.wait_for(answered.wait(), 10)
    await first.shutdown(grace=5)
    assert claimed == [handle.id]

    second = make_engine()
    build(second)
    run = await second.get_run(handle.id)
    assert run.status is RunStatus.QUEUED
    assert run.lease_owner is None
    assert run.lost_leases == 0
    async with second:
        assert await second.handle(handle.id).result(timeout=10) == "done"
