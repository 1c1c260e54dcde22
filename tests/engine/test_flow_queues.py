"""Queues at run time, in one process: pause and resume, limits changed while workers run,
waiting runs that give their slot back, priority under a concurrency limit, and what
`engine.queues()` reports."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from perdure import (
    Engine,
    InvalidOptionError,
    ManualClock,
    RunContext,
    RunHandle,
    RunStatus,
)

from .conftest import MakeEngine
from .support import wait_for_status, wait_until


class Tracker:
    """Counts the task bodies running at once, and the order they entered and left."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.log: list[str] = []

    @contextmanager
    def running(self, name: str) -> Generator[None]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.log.append(f"+{name}")
        try:
            yield
        finally:
            self.active -= 1
            self.log.append(f"-{name}")


def add_probe(engine: Engine) -> None:
    @engine.task(id="probe", queue="elsewhere")
    async def probe(ctx: RunContext) -> str:
        return "ok"


async def claim_cycle_passes(engine: Engine) -> None:
    """Trigger a run on an unlimited queue and wait for it: the worker has run a claim since
    now, and that claim considered every queue it serves (limited queues first)."""
    engine.wake()
    assert await (await engine.trigger("probe")).result(timeout=10) == "ok"


async def test_paused_queue_keeps_its_runs_until_resumed(make_engine: MakeEngine) -> None:
    engine = make_engine()
    add_probe(engine)

    @engine.task(id="newsletter", queue="emails")
    async def newsletter(ctx: RunContext, to: str) -> str:
        return f"sent to {to}"

    await engine.pause_queue("emails")
    async with engine:
        held = await newsletter.trigger("ada@example.com")
        await claim_cycle_passes(engine)  # another queue's run completes meanwhile
        assert (await held.get()).status is RunStatus.QUEUED
        info = {q.name: q for q in await engine.queues()}["emails"]
        assert (info.limits.paused, info.waiting, info.running) == (True, 1, 0)

        await engine.resume_queue("emails")
        assert await held.result(timeout=10) == "sent to ada@example.com"
        info = {q.name: q for q in await engine.queues()}["emails"]
        assert (info.limits.paused, info.waiting, info.running) == (False, 0, 0)


async def test_redeclaring_queues_at_connect_overwrites_limits_but_not_a_pause(
    make_engine: MakeEngine, shared_url: str
) -> None:
    deploy_1 = make_engine()
    deploy_1.queue("emails", concurrency=5, max_depth=1000)
    await deploy_1.open()
    await deploy_1.set_queue_limits("emails", concurrency=2)  # as `perdure queues set-limit`
    await deploy_1.pause_queue("emails")
    (before,) = await deploy_1.queues()
    assert (before.limits.concurrency, before.limits.max_depth) == (2, 1000)

    deploy_2 = make_engine()  # the next deploy declares the queue again
    deploy_2.queue("emails", concurrency=8)
    await deploy_2.open()
    (after,) = await deploy_1.queues()
    assert (after.limits.concurrency, after.limits.max_depth) == (8, None)
    assert after.limits.paused


async def test_a_waiting_run_gives_its_slot_back_and_takes_it_again_to_resume(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    # The clock jumps an hour while `blocker` runs: a lease longer than that keeps it leased.
    engine = make_engine(clock=clock, lease=timedelta(hours=10))
    engine.queue("serial", concurrency=1)
    add_probe(engine)
    tracker = Tracker()
    release = asyncio.Event()

    @engine.task(id="napper", queue="serial")
    async def napper(ctx: RunContext) -> str:
        with tracker.running("napper"):
            await ctx.sleep(3600)
        return "rested"

    @engine.task(id="blocker", queue="serial")
    async def blocker(ctx: RunContext) -> str:
        with tracker.running("blocker"):
            await release.wait()
        return "done"

    async with engine:
        napping = await napper.trigger(None)
        await wait_for_status(engine, napping.id, RunStatus.SUSPENDED)
        blocking = await blocker.trigger(None)
        await wait_for_status(engine, blocking.id, RunStatus.RUNNING)  # the slot was free
        info = {q.name: q for q in await engine.queues()}["serial"]
        assert (info.running, info.suspended, info.waiting) == (1, 1, 0)

        clock.advance(3601)  # the nap is over, but the only slot is taken
        await claim_cycle_passes(engine)
        assert (await napping.get()).status is RunStatus.SUSPENDED

        release.set()
        assert await blocking.result(timeout=10) == "done"
        assert await napping.result(timeout=10) == "rested"

    assert tracker.peak == 1
    assert tracker.log == ["+napper", "-napper", "+blocker", "-blocker", "+napper", "-napper"]


async def test_priority_decides_under_a_queue_limit_whatever_the_concurrency_keys(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    engine.queue("serial", concurrency=1)  # a limit, but no per-key limit
    order: list[str] = []

    @engine.task(id="job", queue="serial")
    async def job(ctx: RunContext, name: str) -> None:
        order.append(name)

    handles = [
        await job.trigger("low", priority=0, concurrency_key="b"),
        await job.trigger("high", priority=10, concurrency_key="a"),
        await job.trigger("mid", priority=5, concurrency_key="a"),
        await job.trigger("lowest", priority=-1),
        await job.trigger("high-second", priority=10, concurrency_key="c"),
    ]
    async with engine:
        for handle in handles:
            await handle.result(timeout=10)
    assert order == ["high", "high-second", "mid", "low", "lowest"]


async def test_one_claim_of_several_runs_takes_the_highest_priorities(
    make_engine: MakeEngine,
) -> None:
    """Concurrency keys only reorder a queue that has per-key limits (to be fair across keys);
    without them, a claim of two takes the two highest priorities, even of one key."""
    engine = make_engine()
    engine.queue("pair", concurrency=2)
    tracker = Tracker()
    release = asyncio.Event()

    @engine.task(id="job", queue="pair")
    async def job(ctx: RunContext, name: str) -> None:
        with tracker.running(name):
            await release.wait()

    handles = [
        await job.trigger("low", priority=0, concurrency_key="b"),
        await job.trigger("high", priority=10, concurrency_key="a"),
        await job.trigger("mid", priority=5, concurrency_key="a"),
        await job.trigger("lowest", priority=-1),
    ]
    async with engine:
        await wait_until(lambda: tracker.active == 2, what="two runs to start")
        assert sorted(tracker.log) == ["+high", "+mid"]
        release.set()
        for handle in handles:
            await handle.result(timeout=10)
    assert tracker.peak == 2


async def test_a_backlog_on_an_open_queue_does_not_starve_a_limited_queue(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(concurrency=1)
    engine.queue("emails", concurrency=5)
    order: list[str] = []

    @engine.task(id="bulk")
    async def bulk(ctx: RunContext, n: int) -> None:
        order.append(f"bulk-{n}")

    @engine.task(id="mail", queue="emails")
    async def mail(ctx: RunContext) -> None:
        order.append("mail")

    backlog = await bulk.batch_trigger(list(range(20)))
    email = await mail.trigger(None)
    async with engine:
        await email.result(timeout=10)
        for handle in backlog:
            await handle.result(timeout=10)
    assert order[0] == "mail"


async def test_keys_take_turns_when_fewer_slots_are_free_than_keys_wait(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    engine.queue("sync", concurrency=2, key_concurrency=1)
    order: list[str] = []

    @engine.task(id="sync", queue="sync")
    async def sync(ctx: RunContext, user: str) -> None:
        order.append(user)
        await asyncio.sleep(0.005)

    handles: list[RunHandle[None]] = []
    for hot in ("a", "b"):  # two hot keys, all their runs queued before anyone else's
        handles += await sync.batch_trigger([hot] * 10, concurrency_key=hot)
    for cold in ("c", "d"):
        handles.append(await sync.trigger(cold, concurrency_key=cold))
    async with engine:
        for handle in handles:
            await handle.result(timeout=10)
    assert sorted(order[:4]) == ["a", "b", "c", "d"]
    assert sorted(order) == ["a"] * 10 + ["b"] * 10 + ["c", "d"]


async def test_changing_limits_at_run_time_changes_what_workers_enforce(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    engine.queue("exports", concurrency=1)
    add_probe(engine)
    tracker = Tracker()
    release = asyncio.Event()

    @engine.task(id="export", queue="exports")
    async def export(ctx: RunContext, n: int) -> int:
        with tracker.running("export"):
            await release.wait()
        return n

    async with engine:
        handles = await export.batch_trigger([1, 2, 3, 4])
        await wait_until(lambda: tracker.active == 1, what="one export to start")
        await claim_cycle_passes(engine)
        assert tracker.active == 1

        updated = await engine.set_queue_limits("exports", concurrency=3, max_depth=50)
        assert (updated.concurrency, updated.max_depth) == (3, 50)
        await wait_until(lambda: tracker.active == 3, what="the raised limit to be used")
        await claim_cycle_passes(engine)
        assert tracker.active == 3

        await engine.set_queue_limits("exports", concurrency=0)  # 0 removes the limit
        await wait_until(lambda: tracker.active == 4, what="the limit to be lifted")
        release.set()
        assert [await h.result(timeout=10) for h in handles] == [1, 2, 3, 4]

        (info,) = [q for q in await engine.queues() if q.name == "exports"]
        assert (info.limits.concurrency, info.limits.max_depth) == (None, 50)  # others kept
    assert tracker.peak == 4


async def test_set_queue_limits_rejects_bad_values_before_storing_anything(
    engine: Engine,
) -> None:
    with pytest.raises(InvalidOptionError, match="'concurrency'"):
        await engine.set_queue_limits("q", concurrency=-1)
    with pytest.raises(InvalidOptionError, match="'max_depth'"):
        await engine.set_queue_limits("q", max_depth=1.5)
    with pytest.raises(InvalidOptionError, match="'speed'"):
        await engine.set_queue_limits("q", speed=3)
    assert await engine.queues() == []
