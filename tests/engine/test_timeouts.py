"""Attempt timeouts: async bodies are cancelled, `def` bodies are abandoned and their late
return value ignored."""

from __future__ import annotations

import asyncio
import threading

import pytest

from perdure import Engine, RetryPolicy, RunContext, RunStatus, RunTimedOutError

from .conftest import MakeEngine
from .support import types, wait_until


async def test_async_task_exceeding_its_timeout_is_timed_out(engine: Engine) -> None:
    cancelled = asyncio.Event()
    attempts: list[int] = []

    @engine.task(id="slow", timeout=0.2, retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def slow(ctx: RunContext) -> str:
        attempts.append(ctx.attempt)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    async with engine:
        handle = await slow.trigger(None)
        with pytest.raises(RunTimedOutError) as info:
            await handle.result(timeout=10)
        run = await handle.get()
        events = await handle.events()

    assert cancelled.is_set()
    assert attempts == [1]  # a timeout is final, not retried
    assert run.status is RunStatus.TIMED_OUT
    assert run.output is None
    assert run.error is not None
    assert run.error.type == "TaskTimeoutError"
    assert run.error.retryable is False
    assert "0.2s" in run.error.message
    assert "'slow'" in run.error.message
    assert info.value.error == run.error
    assert types(events)[-1] == "timed_out"
    assert run.finished_at is not None
    assert run.started_at is not None
    assert (run.finished_at - run.started_at).total_seconds() < 5


async def test_sync_task_exceeding_its_timeout_is_timed_out_and_its_late_result_ignored(
    engine: Engine,
) -> None:
    returned = threading.Event()
    saw_cancelled: list[bool] = []

    @engine.task(id="slow-sync", timeout=0.2)
    def slow_sync(ctx: RunContext) -> str:
        # The thread cannot be killed: it is told to stop through ctx.cancelled, and
        # whatever it returns afterwards is ignored.
        saw_cancelled.append(ctx.cancelled.wait_sync(10))
        returned.set()
        return "late value"

    async with engine:
        handle = await slow_sync.trigger(None)
        with pytest.raises(RunTimedOutError):
            await handle.result(timeout=10)
        await wait_until(returned.is_set, what="the thread to return")
        # Give a late write every chance to land, then check it did not.
        await asyncio.sleep(0.05)
        run = await handle.get()
        events = await handle.events()

    assert saw_cancelled == [True]
    assert run.status is RunStatus.TIMED_OUT
    assert run.output is None
    assert run.error is not None
    assert run.error.type == "TaskTimeoutError"
    assert types(events) == ["created", "attempt_started", "attempt_failed", "timed_out"]


async def test_task_finishing_within_its_timeout_completes(engine: Engine) -> None:
    @engine.task(id="in-time", timeout=5)
    async def in_time(ctx: RunContext) -> str:
        await asyncio.sleep(0.01)
        return "done"

    async with engine:
        handle = await in_time.trigger(None)
        assert await handle.result(timeout=10) == "done"
        assert (await handle.get()).status is RunStatus.COMPLETED


async def test_timeout_error_raised_by_task_code_is_an_ordinary_failure(engine: Engine) -> None:
    """Only the engine's own deadline times a run out; a TimeoutError from the task's code
    (an HTTP client, say) is a retryable failure."""

    @engine.task(id="http", timeout=5, retry=RetryPolicy(max_attempts=2, base_delay=0))
    async def http(ctx: RunContext) -> str:
        if ctx.attempt == 1:
            raise TimeoutError("upstream took too long")
        return "ok"

    async with engine:
        handle = await http.trigger(None)
        assert await handle.result(timeout=10) == "ok"
        run = await handle.get()
    assert run.attempt == 2
    assert run.status is RunStatus.COMPLETED


async def test_abandoned_def_bodies_do_not_starve_later_def_tasks(make_engine: MakeEngine) -> None:
    """A timed-out `def` body keeps its thread until it returns; later `def` runs must still
    get a thread at once instead of timing out while they wait for one."""
    engine = make_engine(concurrency=1)
    release = threading.Event()

    @engine.task(id="stuck", timeout=0.1)
    def stuck(ctx: RunContext) -> str:
        release.wait(10)  # ignores ctx.cancelled
        return "late"

    @engine.task(id="quick", timeout=2)
    def quick(ctx: RunContext) -> str:
        return "quick"

    try:
        async with engine:
            stuck_run = await (await stuck.trigger(None)).wait(timeout=10)
            assert stuck_run.status is RunStatus.TIMED_OUT
            handle = await quick.trigger(None)
            assert await handle.result(timeout=10) == "quick"
            assert (await handle.get()).status is RunStatus.COMPLETED
    finally:
        release.set()


async def test_body_swallowing_the_timeout_cancellation_is_still_timed_out(
    engine: Engine,
) -> None:
    @engine.task(id="swallower", timeout=0.1)
    async def swallower(ctx: RunContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "pretends nothing happened"
        return "slept"

    @engine.task(id="converter", timeout=0.1, retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def converter(ctx: RunContext) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None
        return "slept"

    async with engine:
        swallowed = await (await swallower.trigger(None)).wait(timeout=10)
        converted = await (await converter.trigger(None)).wait(timeout=10)

    assert swallowed.status is RunStatus.TIMED_OUT
    assert swallowed.output is None
    assert converted.status is RunStatus.TIMED_OUT
    assert converted.attempt == 1


async def test_a_timed_out_def_body_that_runs_on_starts_no_new_step(engine: Engine) -> None:
    # The abandoned body keeps running in its thread; a step it reaches afterwards must not
    # run (its record would be refused, but its side effect would have happened).
    effects: list[str] = []
    finished = threading.Event()
    outcome: list[str] = []

    def charge_card() -> str:
        effects.append("charged")
        return "ok"

    @engine.task(id="slow-sync", timeout=0.2)
    def slow_sync(ctx: RunContext) -> str:
        try:
            ctx.cancelled.wait_sync(10)  # set at the timeout
            return ctx.step_sync("charge", charge_card)
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise
        finally:
            finished.set()

    async with engine:
        handle = await slow_sync.trigger(None)
        run = await handle.wait(timeout=10)
        assert run.status is RunStatus.TIMED_OUT
        await wait_until(finished.is_set, what="the abandoned body to end")
    assert effects == []
    assert outcome == ["LeaseLost"]
