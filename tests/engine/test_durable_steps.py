"""Durable steps: recorded once and returned from the record on every later execution,
rehydrated to the step's return type; step errors and in-place retries; non-determinism;
`asyncio.gather` over steps; progress, logs and metadata as (non-duplicated) events."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from perdure import (
    Engine,
    ManualClock,
    NonDeterminismError,
    NonRetryableError,
    RetryPolicy,
    RunContext,
    RunStatus,
    StepFailedError,
    StorageError,
)

from .conftest import MakeEngine
from .durable.support import (
    HOUR,
    Calls,
    advance,
    assert_contiguous,
    recorded,
    wait_for_event,
    wait_suspended,
)
from .support import count


class Quote(BaseModel):
    sku: str
    price: float


async def test_recorded_steps_run_once_and_replay_returns_their_recorded_values(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    seen: list[tuple[type, int]] = []

    def price(sku: str) -> Quote:
        calls.hit("a")
        return Quote(sku=sku, price=9.5)

    async def reserve(quote: Quote) -> int:
        calls.hit("b")
        return 7

    def ship(n: int) -> str:
        calls.hit("c")
        return f"shipped {n}"

    @engine.task(id="durable-abc")
    async def flow(ctx: RunContext, sku: str) -> dict[str, Any]:
        quote = await ctx.step("a", price, sku)
        box = await ctx.step("b", reserve, quote)
        seen.append((type(quote), box))  # once per execution of the body
        await ctx.sleep(HOUR)
        shipped = await ctx.step("c", ship, box)
        return {"quote": quote.model_dump(), "box": box, "shipped": shipped}

    async with engine:
        handle = await flow.trigger("book")
        await wait_suspended(engine, handle.id)
        assert dict(calls) == {"a": 1, "b": 1}
        advance(engine, clock, HOUR + 1)
        output = await handle.result(timeout=10)
        events = await handle.events()

    assert output == {"quote": {"sku": "book", "price": 9.5}, "box": 7, "shipped": "shipped 7"}
    assert dict(calls) == {"a": 1, "b": 1, "c": 1}
    # The body ran twice; the replay got a Quote back (rehydrated), not the stored dict.
    assert seen == [(Quote, 7), (Quote, 7)]
    assert recorded(events) == [(0, "a", "completed"), (1, "b", "completed"), (3, "c", "completed")]
    assert count(events, "attempt_started") == 2
    assert count(events, "suspended") == 1
    assert_contiguous(events)


async def test_first_execution_gets_the_same_rehydrated_value_a_replay_gets(
    engine: Engine,
) -> None:
    seen: list[Any] = []

    def as_dict() -> Quote:
        return {"sku": "x", "price": 1}  # type: ignore[return-value]

    @engine.task(id="durable-rehydrate")
    async def flow(ctx: RunContext) -> float:
        quote = await ctx.step("quote", as_dict)
        seen.append(quote)
        return quote.price

    async with engine:
        assert await (await flow.trigger(None)).result(timeout=10) == 1.0
    assert seen == [Quote(sku="x", price=1.0)]


async def test_non_retryable_step_error_is_recorded_and_replay_raises_step_failed(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    caught: list[tuple[str, str]] = []

    def charge() -> int:
        calls.hit("charge")
        raise NonRetryableError("card declined")

    @engine.task(id="durable-step-fails")
    async def flow(ctx: RunContext) -> list[list[str]]:
        try:
            await ctx.step("charge", charge)
        except StepFailedError as exc:  # the replay: from the record, `charge` not called
            caught.append(("replay", str(exc)))
        except NonRetryableError as exc:  # the first execution: the original error
            caught.append(("first", str(exc)))
        await ctx.sleep(HOUR)
        return [list(c) for c in caught]

    async with engine:
        handle = await flow.trigger(None)
        await wait_suspended(engine, handle.id)
        advance(engine, clock, HOUR + 1)
        await handle.result(timeout=10)
        events = await handle.events()

    assert calls["charge"] == 1
    assert caught[0] == ("first", "card declined")
    assert caught[1][0] == "replay"
    assert "charge" in caught[1][1]
    assert "card declined" in caught[1][1]
    assert recorded(events) == [(0, "charge", "failed")]
    failed = next(e for e in events if e.type == "step_recorded")
    assert failed.data["error"]["type"] == "NonRetryableError"


async def test_uncaught_non_retryable_step_error_fails_the_run_without_retry(
    engine: Engine,
) -> None:
    calls = Calls()

    def charge() -> None:
        calls.hit("charge")
        raise NonRetryableError("card declined")

    @engine.task(id="durable-step-fails-run", retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def flow(ctx: RunContext) -> None:
        await ctx.step("charge", charge)

    async with engine:
        run = await (await flow.trigger(None)).wait(timeout=10)

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "NonRetryableError"
    assert calls["charge"] == 1


async def test_step_with_retry_policy_retries_in_place_and_succeeds(engine: Engine) -> None:
    calls = Calls()

    async def flaky() -> str:
        calls.hit("flaky")
        if calls["flaky"] < 3:
            raise ConnectionError(f"try {calls['flaky']}")
        return "ok"

    @engine.task(id="durable-step-retry")
    async def flow(ctx: RunContext) -> str:
        return await ctx.step("flaky", flaky, retry=RetryPolicy(max_attempts=3, base_delay=0.01))

    async with engine:
        handle = await flow.trigger(None)
        assert await handle.result(timeout=10) == "ok"
        run = await handle.get()
        events = await handle.events()

    assert calls["flaky"] == 3
    assert run.attempt == 1  # retried inside the attempt, not by the run's retry policy
    assert recorded(events) == [(0, "flaky", "completed")]


async def test_step_that_exhausts_its_retries_is_not_recorded_and_the_run_fails(
    engine: Engine,
) -> None:
    calls = Calls()

    def broken() -> None:
        calls.hit("broken")
        raise ValueError("still broken")

    @engine.task(id="durable-step-exhausted", retry=RetryPolicy(max_attempts=1))
    async def flow(ctx: RunContext) -> None:
        await ctx.step("broken", broken, retry=RetryPolicy(max_attempts=2, base_delay=0.01))

    async with engine:
        handle = await flow.trigger(None)
        run = await handle.wait(timeout=10)
        events = await handle.events()

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error.type == "ValueError"
    assert calls["broken"] == 2
    assert recorded(events) == []  # a retryable failure leaves the step to the next attempt


SWAPPED = {"value": False}


async def test_changing_the_order_of_two_steps_fails_the_run_with_non_determinism(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    SWAPPED["value"] = False

    @engine.task(id="durable-reordered", retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def flow(ctx: RunContext) -> str:
        order = ["validate", "charge"]
        if SWAPPED["value"]:  # "a new deploy" changed the code while the run was waiting
            order.reverse()
        for name in order:
            await ctx.step(name, calls.hit, name)
        await ctx.sleep(HOUR)
        return "done"

    async with engine:
        handle = await flow.trigger(None)
        await wait_suspended(engine, handle.id)
        SWAPPED["value"] = True
        advance(engine, clock, HOUR + 1)
        run = await handle.wait(timeout=10)
        events = await handle.events()

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error.type == NonDeterminismError.__name__
    assert not run.error.retryable
    assert "'charge'" in run.error.message
    assert "'validate'" in run.error.message
    assert run.attempt == 2  # not retried: the same code would fail the same way
    assert dict(calls) == {"validate": 1, "charge": 1}
    assert_contiguous(events)


async def test_gather_over_steps_is_deterministic_across_a_replay(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    results: list[list[str]] = []

    async def work(name: str, delay: float) -> str:
        calls.hit(name)
        await asyncio.sleep(delay)  # a finishes last, c first: completion order != call order
        return name.upper()

    @engine.task(id="durable-gather")
    async def flow(ctx: RunContext) -> list[str]:
        got = await asyncio.gather(
            ctx.step("a", work, "a", 0.2),
            ctx.step("b", work, "b", 0.1),
            ctx.step("c", work, "c", 0.0),
        )
        results.append(list(got))
        await ctx.sleep(HOUR)
        return list(got)

    async with engine:
        handle = await flow.trigger(None)
        await wait_suspended(engine, handle.id)
        advance(engine, clock, HOUR + 1)
        assert await handle.result(timeout=10) == ["A", "B", "C"]
        events = await handle.events()

    assert results == [["A", "B", "C"], ["A", "B", "C"]]
    assert dict(calls) == {"a": 1, "b": 1, "c": 1}
    # Positions follow the order the calls were made in, not the order they finished in.
    assert recorded(events) == [(0, "a", "completed"), (1, "b", "completed"), (2, "c", "completed")]
    finished = [e.data["name"] for e in events if e.type == "step_recorded"]
    assert finished == ["c", "b", "a"]


async def test_progress_logs_and_metadata_are_events_written_once_despite_replay(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    executions = Calls()

    @engine.task(id="durable-observability")
    async def flow(ctx: RunContext) -> str:
        executions.hit("body")
        ctx.progress({"pct": 10})
        ctx.log.info("charging %s", "card")
        ctx.metadata["stage"] = "charging"
        await ctx.step("charge", lambda: "charged")
        ctx.progress({"pct": 50})
        await ctx.sleep(HOUR)
        ctx.metadata["stage"] = "shipping"
        ctx.log.warning("shipping")
        ctx.progress({"pct": 100})
        return "done"

    async with engine:
        handle = await flow.trigger(None)
        suspended = await wait_suspended(engine, handle.id)
        assert suspended.metadata == {"stage": "charging"}
        advance(engine, clock, HOUR + 1)
        await handle.result(timeout=10)
        run = await handle.get()
        events = await handle.events()

    assert executions["body"] == 2
    assert run.metadata == {"stage": "shipping"}
    assert [e.data["data"] for e in events if e.type == "progress"] == [
        {"pct": 10},
        {"pct": 50},
        {"pct": 100},
    ]
    assert [(e.data["level"], e.data["message"]) for e in events if e.type == "log"] == [
        ("info", "charging card"),
        ("warning", "shipping"),
    ]
    assert [e.data["metadata"] for e in events if e.type == "metadata"] == [
        {"stage": "charging"},
        {"stage": "shipping"},
    ]
    assert_contiguous(events)


async def test_event_numbers_stay_contiguous_through_many_suspends_and_resumes(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="durable-seq")
    async def flow(ctx: RunContext) -> int:
        total = 0
        for i in range(3):
            total += await ctx.step(f"add-{i}", int, i)
            ctx.progress(i)
            await ctx.sleep(HOUR)
        return total

    async with engine:
        handle = await flow.trigger(None)
        for i in range(3):
            await wait_for_event(engine, handle.id, "suspended", i + 1)
            await wait_suspended(engine, handle.id)
            advance(engine, clock, HOUR + 1)
        assert await handle.result(timeout=10) == 3
        events = await handle.events()

    assert count(events, "suspended") == 3
    assert count(events, "progress") == 3
    assert_contiguous(events)


async def test_a_retried_run_replays_the_steps_its_failed_attempt_recorded(
    engine: Engine,
) -> None:
    calls = Calls()

    @engine.task(id="durable-retry-replays", retry=RetryPolicy(max_attempts=2, base_delay=0))
    async def flow(ctx: RunContext) -> int:
        paid = await ctx.step("pay", lambda: calls.hit("pay") or 42)
        if ctx.attempt == 1:
            raise ConnectionError("mail server down")  # after the payment was recorded
        await ctx.step("mail", calls.hit, "mail")
        return paid

    async with engine:
        handle = await flow.trigger(None)
        assert await handle.result(timeout=10) == 42
        run = await handle.get()

    assert run.attempt == 2
    assert dict(calls) == {"pay": 1, "mail": 1}


async def test_a_step_record_rides_out_a_database_outage_without_using_a_retry(
    engine: Engine, monkeypatch: Any
) -> None:
    calls = Calls()

    @engine.task(id="outage", retry=RetryPolicy(max_attempts=1))
    async def outage(ctx: RunContext, n: int) -> int:
        def charge() -> int:
            calls.hit("charge")
            return n + 1

        return await ctx.step("charge", charge)

    storage = await engine.open()
    record_steps = storage.record_steps
    failures = 2

    async def down_then_up(*args: Any, **kwargs: Any) -> bool:
        nonlocal failures
        if failures:
            failures -= 1
            raise StorageError("connection to the database lost (test)")
        return await record_steps(*args, **kwargs)

    monkeypatch.setattr(storage, "record_steps", down_then_up)
    async with engine:
        handle = await outage.trigger(1)
        run = await handle.wait(timeout=30)
        assert await handle.result() == 2

    assert run.status is RunStatus.COMPLETED, run.error
    assert (run.attempt, run.failures, failures) == (1, 0, 0)
    assert calls["charge"] == 1, "the step ran once; only its record was written again"
