"""A run's event history: contiguous sequence numbers, `after_seq` filtering, and live
subscriptions that end when the run finishes."""

from __future__ import annotations

import asyncio

import pytest

from perdure import Engine, RetryPolicy, RunContext, RunEvent, RunNotFoundError

from .support import types, wait_until


async def test_history_is_numbered_contiguously_from_1(engine: Engine) -> None:
    @engine.task(id="flaky", retry=RetryPolicy(max_attempts=3, base_delay=0))
    async def flaky(ctx: RunContext) -> str:
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return "ok"

    async with engine:
        handle = await flaky.trigger(None)
        await handle.result(timeout=10)
        events = await engine.events(handle.id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(events) == 9
    assert all(e.run_id == handle.id for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert events[0].type == "created"
    assert events[0].data["status"] == "queued"
    started = [e for e in events if e.type == "attempt_started"]
    assert [e.data["attempt"] for e in started] == [1, 2, 3]
    assert len({e.data["worker_id"] for e in started}) == 1
    assert events[-1].type == "completed"
    assert events[-1].data == {"status": "completed", "attempt": 3}


async def test_attempt_started_records_the_attempt_and_its_worker(engine: Engine) -> None:
    # PostgreSQL's claim statement writes this event itself; SQLite's claim leaves it to
    # Python. Both must record the same thing.
    seen: list[str] = []

    @engine.task(id="job")
    async def job(ctx: RunContext) -> None:
        seen.append(ctx.worker_id)

    async with engine:
        handle = await job.trigger(None)
        await handle.result(timeout=10)
        events = await engine.events(handle.id)

    [started] = [e for e in events if e.type == "attempt_started"]
    assert started.seq == 2
    assert started.data == {"status": "running", "attempt": 1, "worker_id": seen[0]}


async def test_events_after_seq_returns_only_later_events(engine: Engine) -> None:
    @engine.task(id="job")
    async def job(ctx: RunContext) -> None:
        return None

    async with engine:
        handle = await job.trigger(None)
        await handle.result(timeout=10)
        everything = await engine.events(handle.id)
        after_one = await engine.events(handle.id, after_seq=1)
        after_two = await handle.events(after_seq=2)
        after_last = await engine.events(handle.id, after_seq=everything[-1].seq)

    assert types(everything) == ["created", "attempt_started", "completed"]
    assert after_one == everything[1:]
    assert after_two == everything[2:]
    assert after_last == []


async def test_events_of_an_unknown_run_raise_not_found(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError):
        await engine.events("run_unknown")


async def test_subscribe_yields_events_live_until_the_run_finishes(engine: Engine) -> None:
    release = asyncio.Event()

    @engine.task(id="gated")
    async def gated(ctx: RunContext) -> str:
        await release.wait()
        return "released"

    received: list[RunEvent] = []

    async def consume(run_id: str) -> None:
        async for event in engine.subscribe(run_id):
            received.append(event)

    async with engine:
        handle = await gated.trigger(None)
        consumer = asyncio.create_task(consume(handle.id))
        # Live: the subscriber sees the attempt start while the run is still running.
        await wait_until(
            lambda: "attempt_started" in types(received), what="attempt_started to arrive"
        )
        assert not consumer.done()
        release.set()
        await asyncio.wait_for(consumer, 10)

    assert types(received) == ["created", "attempt_started", "completed"]
    assert [e.seq for e in received] == [1, 2, 3]


async def test_subscribe_to_a_finished_run_replays_its_history_and_ends(engine: Engine) -> None:
    @engine.task(id="job")
    async def job(ctx: RunContext) -> None:
        return None

    async with engine:
        handle = await job.trigger(None)
        await handle.result(timeout=10)
        replayed = [e async for e in engine.subscribe(handle.id)]
        resumed = [e async for e in engine.subscribe(handle.id, after_seq=1)]
        history = await handle.events()

    assert replayed == history
    assert resumed == history[1:]


async def test_subscribe_sees_retries_and_ends_on_failure(engine: Engine) -> None:
    @engine.task(id="doomed", retry=RetryPolicy(max_attempts=2, base_delay=0))
    async def doomed(ctx: RunContext) -> None:
        raise RuntimeError("nope")

    async with engine:
        handle = await doomed.trigger(None)
        received = [e async for e in engine.subscribe(handle.id)]

    assert types(received) == [
        "created",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "attempt_failed",
        "failed",
    ]


async def test_subscribe_to_an_unknown_run_raises_not_found(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError):
        async for _ in engine.subscribe("run_unknown"):
            pass
