"""Failures and retries: retryable and non-retryable errors, exhausted retries, and outputs
that do not serialize to the declared type."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from perdure import (
    Engine,
    NonRetryableError,
    RetryableError,
    RetryPolicy,
    RunContext,
    RunFailedError,
    RunStatus,
)

from .conftest import MakeEngine
from .support import count, types, wait_for_status

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0)


class Counted(BaseModel):
    value: int


async def test_task_that_fails_twice_then_succeeds_completes_on_attempt_3(
    engine: Engine,
) -> None:
    attempts: list[int] = []

    @engine.task(id="flaky", retry=FAST_RETRY)
    async def flaky(ctx: RunContext, n: int) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"boom {ctx.attempt}")
        return n * 2

    async with engine:
        handle = await flaky.trigger(21)
        assert await handle.result(timeout=10) == 42
        run = await handle.get()
        events = await handle.events()

    assert attempts == [1, 2, 3]
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 3
    assert run.output == 42
    assert count(events, "attempt_failed") == 2
    assert count(events, "retry_scheduled") == 2
    assert count(events, "attempt_started") == 3
    assert types(events) == [
        "created",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "completed",
    ]
    failed = [e for e in events if e.type == "attempt_failed"]
    assert [e.data["attempt"] for e in failed] == [1, 2]
    assert [e.data["error"]["type"] for e in failed] == ["ConnectionError"] * 2
    assert failed[0].data["error"]["message"] == "boom 1"


async def test_def_task_is_retried_too(engine: Engine) -> None:
    @engine.task(id="flaky-sync", retry=FAST_RETRY)
    def flaky(ctx: RunContext) -> str:
        if ctx.attempt == 1:
            raise RetryableError("first try fails")
        return "ok"

    async with engine:
        handle = await flaky.trigger(None)
        assert await handle.result(timeout=10) == "ok"
        run = await handle.get()
    assert run.attempt == 2


async def test_non_retryable_error_fails_at_once(engine: Engine) -> None:
    attempts: list[int] = []

    @engine.task(id="fatal", retry=FAST_RETRY)
    async def fatal(ctx: RunContext) -> None:
        attempts.append(ctx.attempt)
        raise NonRetryableError("bad request: account closed")

    async with engine:
        handle = await fatal.trigger(None)
        run = await handle.wait(timeout=10)
        events = await handle.events()

    assert attempts == [1]
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "NonRetryableError"
    assert run.error.message == "bad request: account closed"
    assert run.error.retryable is False
    assert run.error.traceback is not None
    assert "account closed" in run.error.traceback
    assert types(events) == ["created", "attempt_started", "attempt_failed", "failed"]
    assert count(events, "retry_scheduled") == 0


async def test_subclass_of_non_retryable_error_fails_at_once(engine: Engine) -> None:
    class PaymentDeclined(NonRetryableError):
        pass

    @engine.task(id="pay", retry=FAST_RETRY)
    async def pay(ctx: RunContext) -> None:
        raise PaymentDeclined("card declined")

    async with engine:
        run = await (await pay.trigger(None)).wait(timeout=10)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "PaymentDeclined"


async def test_exhausted_retries_fail_with_the_last_error(engine: Engine) -> None:
    @engine.task(id="always-fails", retry=FAST_RETRY)
    async def always_fails(ctx: RunContext) -> int:
        raise ValueError(f"failure number {ctx.attempt}")

    async with engine:
        handle = await always_fails.trigger(None)
        with pytest.raises(RunFailedError) as info:
            await handle.result(timeout=10)
        run = await handle.get()
        events = await handle.events()

    assert run.status is RunStatus.FAILED
    assert run.attempt == 3
    assert run.output is None
    assert run.error is not None
    assert run.error.type == "ValueError"
    assert run.error.message == "failure number 3"
    assert run.error.retryable is True

    error = info.value
    assert error.error == run.error
    assert error.run is not None
    assert error.run.id == handle.id
    assert "failure number 3" in str(error)
    assert "always-fails" in str(error)
    assert count(events, "attempt_failed") == 3
    assert count(events, "retry_scheduled") == 2
    assert types(events)[-1] == "failed"


async def test_single_attempt_policy_does_not_retry(engine: Engine) -> None:
    @engine.task(id="once", retry=RetryPolicy(max_attempts=1))
    def once(ctx: RunContext) -> None:
        raise RuntimeError("no second chance")

    async with engine:
        run = await (await once.trigger(None)).wait(timeout=10)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1


async def test_retry_waits_for_its_backoff_delay(engine: Engine) -> None:
    """A retry is `retrying` with a future `available_at` until its delay passes."""

    @engine.task(id="slow-retry", retry=RetryPolicy(max_attempts=2, base_delay=60))
    async def slow_retry(ctx: RunContext) -> None:
        raise RuntimeError("try again in a minute")

    async with engine:
        handle = await slow_retry.trigger(None)
        run = await wait_for_status(engine, handle.id, RunStatus.RETRYING)

    assert run.status is RunStatus.RETRYING
    assert run.attempt == 1
    assert run.available_at is not None
    delay = (run.available_at - run.updated_at).total_seconds()
    assert delay == pytest.approx(60, abs=1)


async def test_output_not_matching_the_declared_type_fails_without_retry(
    engine: Engine,
) -> None:
    attempts: list[int] = []

    @engine.task(id="liar", retry=FAST_RETRY)
    async def liar(ctx: RunContext) -> int:
        attempts.append(ctx.attempt)
        return "not a number"  # type: ignore[return-value]

    async with engine:
        handle = await liar.trigger(None)
        with pytest.raises(RunFailedError) as info:
            await handle.result(timeout=10)
        run = await handle.get()

    assert attempts == [1]
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.output is None
    assert run.error is not None
    assert run.error.type == "OutputValidationError"
    assert run.error.retryable is False
    assert "'liar'" in run.error.message
    assert "int" in run.error.message
    assert info.value.error == run.error


async def test_output_that_validates_into_the_declared_type_is_accepted(engine: Engine) -> None:
    @engine.task(id="dict-for-model")
    async def dict_for_model(ctx: RunContext) -> Counted:
        return {"value": 3}  # type: ignore[return-value]

    async with engine:
        result = await (await dict_for_model.trigger(None)).result(timeout=10)
    assert result == Counted(value=3)


async def test_oversized_output_fails_without_retry(make_engine: MakeEngine) -> None:
    engine = make_engine(max_payload_bytes=100)

    @engine.task(id="big-output", retry=FAST_RETRY)
    async def big_output(ctx: RunContext) -> str:
        return "x" * 1000

    async with engine:
        run = await (await big_output.trigger(None)).wait(timeout=10)
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "OutputValidationError"
    assert "max_payload_bytes" in run.error.message


async def test_cancelled_error_from_the_task_own_code_is_a_failure(engine: Engine) -> None:
    """A CancelledError the engine did not cause (the body awaited something that was
    cancelled) fails the attempt like any error; it is not treated as a lost worker, which
    would leave the run `running` until its lease expired."""

    @engine.task(id="awaits-cancelled", retry=FAST_RETRY)
    async def awaits_cancelled(ctx: RunContext) -> str:
        if ctx.attempt == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        return "second attempt"

    async with engine:
        handle = await awaits_cancelled.trigger(None)
        assert await handle.result(timeout=10) == "second attempt"
        run = await handle.get()
        events = await handle.events()

    assert run.attempt == 2
    assert run.lost_leases == 0
    failed = [e for e in events if e.type == "attempt_failed"]
    assert [e.data["error"]["type"] for e in failed] == ["CancelledError"]
