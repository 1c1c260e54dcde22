"""Limits on starts and on triggers, in one process on a ManualClock: sliding-window rate
limits (per queue and per key, waiting or rejecting), the depth cap, debounce, and the
idempotency key's own TTL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from perdure import (
    BackpressureError,
    Debounce,
    Engine,
    ManualClock,
    RateLimit,
    RateLimitedError,
    RunContext,
    RunHandle,
    RunStatus,
)

from .conftest import MakeEngine
from .support import types, wait_for_status


def add_probe(engine: Engine) -> None:
    @engine.task(id="probe", queue="elsewhere")
    async def probe(ctx: RunContext) -> str:
        return "ok"


async def claim_cycle_passes(engine: Engine) -> None:
    """A run on an unlimited queue completes: the worker has claimed since now, and that claim
    considered every queue it serves."""
    engine.wake()
    assert await (await engine.trigger("probe")).result(timeout=10) == "ok"


def start_times(runs: list[float | None]) -> list[float]:
    return sorted(t for t in runs if t is not None)


async def test_rate_limited_runs_wait_for_the_sliding_window(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    engine.queue("sms", rate_limit=RateLimit(3, per=timedelta(minutes=1)))
    add_probe(engine)

    @engine.task(id="text", queue="sms")
    async def text(ctx: RunContext, n: int) -> int:
        return n

    t0 = clock.time()
    async with engine:
        handles = await text.batch_trigger(list(range(7)))
        for handle in handles[:3]:
            assert await handle.result(timeout=10) in (0, 1, 2)
        await claim_cycle_passes(engine)
        waiting = [(await h.get()).status for h in handles[3:]]
        assert waiting == [RunStatus.QUEUED] * 4  # waiting, not dropped

        clock.advance(59.5)  # the first three starts are still in the window
        await claim_cycle_passes(engine)
        assert [(await h.get()).status for h in handles[3:]] == [RunStatus.QUEUED] * 4

        clock.advance(1)  # they left it: three more may start
        engine.wake()
        for handle in handles[3:6]:
            await handle.result(timeout=10)
        await claim_cycle_passes(engine)
        assert (await handles[6].get()).status is RunStatus.QUEUED

        clock.advance(60)
        engine.wake()
        assert await handles[6].result(timeout=10) == 6
        runs = [await h.get() for h in handles]

    starts = start_times([r.started_at.timestamp() if r.started_at else None for r in runs])
    assert starts == [t0] * 3 + [t0 + 60.5] * 3 + [t0 + 120.5]


async def test_a_resume_counts_as_a_start(make_engine: MakeEngine, clock: ManualClock) -> None:
    """Every claim is a start, a resume after a durable wait included."""
    engine = make_engine(clock=clock)
    engine.queue("api", rate_limit=RateLimit(2, per=60))
    add_probe(engine)

    @engine.task(id="call", queue="api")
    async def call(ctx: RunContext, n: int) -> int:
        if n == 0:
            await ctx.sleep(10)
        return n

    async with engine:
        napping = await call.trigger(0)
        await wait_for_status(engine, napping.id, RunStatus.SUSPENDED)
        clock.advance(11)
        engine.wake()
        assert await napping.result(timeout=10) == 0  # two starts in the window now

        later = await call.trigger(1)
        await claim_cycle_passes(engine)
        assert (await later.get()).status is RunStatus.QUEUED
        clock.advance(50)  # 61 s after the first start: one start left the window
        engine.wake()
        assert await later.result(timeout=10) == 1


async def test_per_key_rate_limit_holds_each_key_to_its_own_window(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    engine.queue("reports", key_rate_limit=RateLimit(2, per=60))
    add_probe(engine)

    @engine.task(id="report", queue="reports")
    async def report(ctx: RunContext, n: int) -> int:
        return n

    async with engine:
        tenant_a = [await report.trigger(n, concurrency_key="tenant-a") for n in range(3)]
        tenant_b = await report.trigger(10, concurrency_key="tenant-b")
        unkeyed = await report.trigger(20)  # no key: no per-key limit
        assert [await h.result(timeout=10) for h in tenant_a[:2]] == [0, 1]
        assert await tenant_b.result(timeout=10) == 10
        assert await unkeyed.result(timeout=10) == 20
        await claim_cycle_passes(engine)
        assert (await tenant_a[2].get()).status is RunStatus.QUEUED

        clock.advance(61)
        engine.wake()
        assert await tenant_a[2].result(timeout=10) == 2


async def test_reject_mode_raises_with_retry_after_and_stores_nothing(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    engine.queue("sms", rate_limit=RateLimit(2, per=60), key_rate_limit=RateLimit(1, per=120))

    @engine.task(id="text", queue="sms")
    async def text(ctx: RunContext, n: int) -> int:
        return n

    async with engine:
        accepted = await text.trigger(1, rate_limit="reject")  # the window has room
        assert await accepted.result(timeout=10) == 1
        clock.advance(10)
        keyed = await text.trigger(2, rate_limit="reject", concurrency_key="user-7")
        assert await keyed.result(timeout=10) == 2
        clock.advance(5)

        with pytest.raises(RateLimitedError) as queue_full:
            await text.trigger(3, rate_limit="reject")
        # Room again when the first start (15 s ago) leaves the 60 s window.
        assert queue_full.value.retry_after == pytest.approx(45)
        assert "queue 'sms' is at its rate limit (2 per 60s)" in str(queue_full.value)

        clock.advance(45)  # the queue window has room again; user-7's has not
        with pytest.raises(RateLimitedError) as key_full:
            await text.trigger(4, rate_limit="reject", concurrency_key="user-7")
        assert key_full.value.retry_after == pytest.approx(70)  # its start at +10 s, + 120 s
        assert "concurrency key 'user-7'" in str(key_full.value)

        page = await engine.list_runs(task_id="text")
        assert sorted(run.input for run in page.runs) == [1, 2]  # the rejected stored nothing

        waiting = await text.trigger(5)  # the default mode waits instead of rejecting
        assert await waiting.result(timeout=10) == 5


async def test_queue_depth_cap_rejects_the_trigger_past_it(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.queue("inbox", max_depth=100)

    @engine.task(id="ingest", queue="inbox")
    async def ingest(ctx: RunContext, n: int) -> int:
        return n

    await ingest.batch_trigger(list(range(99)))
    await ingest.trigger(99)
    with pytest.raises(BackpressureError) as full:
        await ingest.trigger(100)
    assert (full.value.queue, full.value.depth, full.value.cap) == ("inbox", 100, 100)
    assert "queue 'inbox' is full: 100 runs waiting, cap 100" in str(full.value)
    with pytest.raises(BackpressureError):
        await ingest.batch_trigger([101, 102])

    page = await engine.list_runs(task_id="ingest", limit=1000)
    assert len(page.runs) == 100
    assert sorted(run.input for run in page.runs) == list(range(100))
    (info,) = [q for q in await engine.queues() if q.name == "inbox"]
    assert (info.waiting, info.limits.max_depth) == (100, 100)


async def test_a_cap_set_later_by_another_engine_holds_at_once(
    make_engine: MakeEngine, shared_url: str
) -> None:
    # On PostgreSQL, triggers into a queue without a cap take a one-statement path: it must
    # see a cap another engine has set since, with nothing cached on this side.
    engine = make_engine()
    admin = make_engine(shared_url)

    @engine.task(id="ingest", queue="inbox")
    async def ingest(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="other", queue="outbox")
    async def other(ctx: RunContext, n: int) -> int:
        return n

    await ingest.batch_trigger([1, 2, 3])
    await admin.set_queue_limits("inbox", max_depth=4)
    with pytest.raises(BackpressureError) as full:
        await ingest.batch_trigger([4, 5])
    assert (full.value.queue, full.value.depth, full.value.cap) == ("inbox", 3, 4)
    assert len((await engine.list_runs(task_id="ingest")).runs) == 3  # nothing stored
    await ingest.trigger(4)  # up to the cap
    await other.batch_trigger([6, 7])  # a queue without a cap still takes runs
    assert len((await engine.list_runs(task_id="ingest")).runs) == 4
    assert len((await engine.list_runs(task_id="other")).runs) == 2


async def test_a_batch_that_would_pass_the_cap_is_rejected_whole(make_engine: MakeEngine) -> None:
    engine = make_engine()
    engine.queue("inbox", max_depth=5)

    @engine.task(id="ingest", queue="inbox")
    async def ingest(ctx: RunContext, n: int) -> int:
        return n

    await ingest.batch_trigger([1, 2, 3])
    with pytest.raises(BackpressureError) as full:
        await ingest.batch_trigger([4, 5, 6])
    assert (full.value.depth, full.value.cap) == (3, 5)
    assert len((await engine.list_runs(task_id="ingest")).runs) == 3
    await ingest.batch_trigger([4, 5])  # exactly up to the cap
    assert len((await engine.list_runs(task_id="ingest")).runs) == 5


async def test_a_full_queue_still_returns_the_run_of_a_live_idempotency_key(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    """A client retrying an idempotent trigger gets its first run back, full queue or not."""
    engine = make_engine(clock=clock)
    engine.queue("inbox", max_depth=2)

    @engine.task(id="ingest", queue="inbox")
    async def ingest(ctx: RunContext, n: int) -> int:
        return n

    first = await ingest.trigger(1, idempotency_key="upload-1", idempotency_ttl=60)
    await ingest.trigger(2)
    again = await ingest.trigger(1, idempotency_key="upload-1", idempotency_ttl=60)
    assert again.id == first.id
    with pytest.raises(BackpressureError):
        await ingest.trigger(3, idempotency_key="upload-3")
    clock.advance(61)  # the key expired: this trigger would add a run
    with pytest.raises(BackpressureError):
        await ingest.trigger(1, idempotency_key="upload-1", idempotency_ttl=60)
    assert len((await engine.list_runs(task_id="ingest")).runs) == 2


async def test_debounced_triggers_collapse_into_one_run_with_the_latest_input(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    add_probe(engine)
    seen: list[str] = []

    @engine.task(id="reindex")
    async def reindex(ctx: RunContext, version: str) -> str:
        seen.append(version)
        return version

    window = Debounce("doc-42", timedelta(seconds=10))
    async with engine:
        handles: list[RunHandle[str]] = []
        last_trigger = clock.time()
        for n in range(5):  # 2 s apart: each lands within the window the previous one opened
            handles.append(await reindex.trigger(f"v{n}", debounce=window))
            last_trigger = clock.time()
            clock.advance(2)
        assert len({h.id for h in handles}) == 1
        run = await handles[0].get()
        assert (run.status, run.input) == (RunStatus.DELAYED, "v4")
        assert run.available_at is not None
        assert run.available_at.timestamp() == pytest.approx(last_trigger + 10)

        clock.advance(7)  # 9 s after the last trigger: the window is still open
        await claim_cycle_passes(engine)
        assert (await handles[0].get()).status is RunStatus.DELAYED

        clock.advance(2)
        engine.wake()
        assert await handles[0].result(timeout=10) == "v4"
        run = await handles[0].get()
        assert run.started_at is not None
        assert run.started_at.timestamp() >= last_trigger + 10

        # Once the run has started, the same key opens a new window and a new run.
        again = await reindex.trigger("v5", debounce=window)
        assert again.id != handles[0].id
        clock.advance(11)
        engine.wake()
        assert await again.result(timeout=10) == "v5"
        events = await handles[0].events()

    assert seen == ["v4", "v5"]
    assert types(events) == [
        "created",
        "debounced",
        "debounced",
        "debounced",
        "debounced",
        "attempt_started",
        "completed",
    ]


async def test_idempotency_key_past_its_ttl_creates_a_new_run(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="charge")
    async def charge(ctx: RunContext, cents: int) -> int:
        return cents

    ttl = timedelta(hours=1)
    first = await charge.trigger(100, idempotency_key="order-1", idempotency_ttl=ttl)
    clock.advance(3599)
    again = await charge.trigger(100, idempotency_key="order-1", idempotency_ttl=ttl)
    assert again.id == first.id

    clock.advance(2)
    later = await charge.trigger(100, idempotency_key="order-1", idempotency_ttl=ttl)
    assert later.id != first.id
    assert (await later.get()).idempotency_key == "order-1"
    assert len((await engine.list_runs(task_id="charge")).runs) == 2
    # The new run holds the key now.
    repeat = await charge.trigger(100, idempotency_key="order-1", idempotency_ttl=ttl)
    assert repeat.id == later.id
