"""Leases and fencing, driven through the storage operations the worker uses: a stale
attempt's writes change nothing, recovered runs go back through the normal claim path, and
a run whose worker keeps dying becomes a dead letter."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from perdure import ManualClock, Run, RunContext, RunFailedError, RunStatus
from perdure.core.models import Outcome
from perdure.storage import Storage

from .conftest import MakeEngine
from .support import count, types, wait_until

LEASE = 10.0


async def claim(storage: Storage, worker: str, clock: ManualClock) -> list[Run]:
    return await storage.claim_runs(worker, ["default"], ["fenced"], 1, LEASE, clock.time())


async def test_stale_completion_after_lease_takeover_is_rejected(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="fenced")
    async def fenced(ctx: RunContext) -> str:
        return "never run by a worker here"

    handle = await fenced.trigger(None)
    storage = await engine.open()

    (a_run,) = await claim(storage, "worker-a", clock)
    assert a_run.id == handle.id
    assert a_run.attempt == 1
    assert a_run.lease_owner == "worker-a"

    clock.advance(LEASE + 1)  # worker A stops heartbeating (paused, partitioned...)
    recovered = await storage.recover_expired_leases(clock.time(), max_lost_leases=3)
    assert [r.id for r in recovered] == [handle.id]
    assert recovered[0].status is RunStatus.QUEUED
    assert recovered[0].lost_leases == 1

    (b_run,) = await claim(storage, "worker-b", clock)
    assert b_run.attempt == 2
    assert b_run.lease_owner == "worker-b"

    # Worker A wakes up and tries to finish, heartbeat, or release its old attempt.
    stale = Outcome(handle.id, 1, RunStatus.COMPLETED, output_json='"from A"')
    assert await storage.finish_attempts("worker-a", [stale], clock.time()) == [False]
    assert await storage.extend_leases("worker-a", [(handle.id, 1)], LEASE, clock.time()) == set()
    assert await storage.owned_runs("worker-a", [(handle.id, 1)]) == set()
    assert await storage.release_runs("worker-a", [(handle.id, 1)], clock.time()) == 0
    # Even with the right owner, an old attempt number is fenced off.
    old_attempt = Outcome(handle.id, 1, RunStatus.COMPLETED, output_json='"wrong attempt"')
    assert await storage.finish_attempts("worker-b", [old_attempt], clock.time()) == [False]

    run = await handle.get()
    assert run.status is RunStatus.RUNNING
    assert run.attempt == 2
    assert run.lease_owner == "worker-b"
    assert run.output is None
    assert await storage.owned_runs("worker-b", [(handle.id, 2)]) == {handle.id}

    done = Outcome(handle.id, 2, RunStatus.COMPLETED, output_json='"from B"')
    assert await storage.finish_attempts("worker-b", [done], clock.time()) == [True]
    assert await storage.finish_attempts("worker-b", [done], clock.time()) == [False]

    run = await handle.get()
    events = await handle.events()
    assert run.status is RunStatus.COMPLETED
    assert run.output == "from B"
    assert await handle.result(timeout=1) == "from B"
    assert run.attempt == 2
    assert run.lost_leases == 1
    assert types(events) == [
        "created",
        "attempt_started",
        "lease_lost",
        "attempt_started",
        "completed",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    lost = events[2]
    assert lost.data["worker_id"] == "worker-a"
    assert lost.data["attempt"] == 1


async def test_heartbeat_keeps_the_lease(make_engine: MakeEngine, clock: ManualClock) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="fenced")
    async def fenced(ctx: RunContext) -> None:
        return None

    handle = await fenced.trigger(None)
    storage = await engine.open()
    await claim(storage, "worker-a", clock)
    clock.advance(LEASE - 1)
    owned = await storage.extend_leases("worker-a", [(handle.id, 1)], LEASE, clock.time())
    assert owned == {handle.id}
    clock.advance(LEASE - 1)  # past the first lease, within the extended one
    assert await storage.recover_expired_leases(clock.time(), 3) == []
    assert (await handle.get()).lease_owner == "worker-a"


async def test_run_lost_three_times_fails_as_a_dead_letter(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)

    @engine.task(id="fenced")
    async def fenced(ctx: RunContext) -> None:
        return None

    handle = await fenced.trigger(None)
    storage = await engine.open()

    for n in range(1, 4):
        (claimed,) = await claim(storage, f"worker-{n}", clock)
        assert claimed.attempt == n
        clock.advance(LEASE + 1)
        (recovered,) = await storage.recover_expired_leases(clock.time(), max_lost_leases=3)
        assert recovered.lost_leases == n

    run = await handle.get()
    assert run.status is RunStatus.FAILED
    assert run.attempt == 3
    assert run.lost_leases == 3
    assert run.finished_at is not None
    assert run.error is not None
    assert run.error.type == "WorkerLostError"
    assert run.error.message.startswith("worker lost 3 times")
    assert run.error.retryable is False
    assert await claim(storage, "worker-4", clock) == []

    events = await handle.events()
    assert count(events, "lease_lost") == 3
    assert types(events)[-1] == "failed"
    with pytest.raises(RunFailedError, match="worker lost 3 times"):
        await handle.result(timeout=1)


async def test_max_lost_leases_option_sets_the_cap(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock, max_lost_leases=1)

    @engine.task(id="fenced")
    async def fenced(ctx: RunContext) -> None:
        return None

    handle = await fenced.trigger(None)
    storage = await engine.open()
    await claim(storage, "worker-a", clock)
    clock.advance(LEASE + 1)
    await engine.run_maintenance()  # the engine's sweep uses its max_lost_leases
    run = await handle.get()
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error.message.startswith("worker lost 1 times")


async def test_worker_whose_lease_was_taken_over_stops_its_attempt(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    """In the worker: when the lease of a running attempt expires and the run is recovered and
    claimed again, the old attempt is stopped (`ctx.cancelled`) and its result discarded; the
    new attempt's result is the run's."""
    engine = make_engine(clock=clock, lease=LEASE, heartbeat=5)
    first_started = asyncio.Event()
    first_stopped: list[bool] = []

    @engine.task(id="fenced")
    async def fenced(ctx: RunContext) -> str:
        if ctx.attempt == 1:
            first_started.set()
            try:
                await asyncio.sleep(30)
            finally:
                first_stopped.append(ctx.cancelled.is_set())
            return "stale result of attempt 1"
        return f"result of attempt {ctx.attempt}"

    async with engine:
        handle = await fenced.trigger(None)
        await asyncio.wait_for(first_started.wait(), 10)
        # The worker's heartbeat is far from due: the lease expires on the clock, the
        # maintenance sweep recovers the run and a worker (here, the same one) claims it.
        clock.advance(LEASE + 1)
        assert await handle.result(timeout=10) == "result of attempt 2"
        await wait_until(lambda: bool(first_stopped), what="attempt 1 to be stopped")
        run = await handle.get()
        events = await handle.events()

    assert first_stopped == [True]
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 2
    assert run.lost_leases == 1
    assert types(events) == [
        "created",
        "attempt_started",
        "lease_lost",
        "attempt_started",
        "completed",
    ]


async def test_a_run_leased_to_a_worker_that_is_not_running_it_is_released(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    # A claim committed whose answer never reached the worker (the connection dropped): the
    # run is leased to a live worker that does not know it. Its heartbeat hands it back, and
    # the run is not counted as lost.
    engine = make_engine(heartbeat=0.05)

    @engine.task(id="stray")
    async def stray(ctx: RunContext) -> str:
        return f"ran attempt {ctx.attempt}"

    handle = await stray.trigger(None, delay=3600)  # not due: the worker leaves it alone
    await engine.start()
    storage = await engine.open()
    worker_id = engine.worker_id
    assert worker_id is not None
    later = time.time() + 3600
    (claimed,) = await storage.claim_runs(worker_id, ["default"], ["stray"], 1, LEASE, later)
    assert claimed.id == handle.id

    assert await handle.result(timeout=10) == "ran attempt 2"
    run = await engine.get_run(handle.id)
    assert run.lost_leases == 0
    assert types(await engine.events(handle.id)) == [
        "created",
        "attempt_started",
        "lease_released",
        "attempt_started",
        "completed",
    ]
    released = f"released 1 runs leased to worker {worker_id}"
    await wait_until(lambda: released in caplog.text, what="the heartbeat's warning")


async def test_a_claim_answered_while_the_loop_is_blocked_is_not_taken_for_a_stray(
    make_engine: MakeEngine, backend: str, clock: ManualClock
) -> None:
    # A PostgreSQL claim commits on the server while a CPU-bound body blocks the event loop;
    # its answer waits in the socket. The heartbeat (its own thread) sees the run leased to
    # its worker at several beats without the worker running it. Released, the run would be
    # claimed again and run twice once the loop resumes and starts it.
    if backend != "postgres":
        pytest.skip("a PostgreSQL claim commits on the server while the client loop is blocked")
    engine = make_engine(clock=clock, heartbeat=0.1, lease=30)
    executions: list[int] = []
    claiming = asyncio.Event()

    @engine.task(id="hog")
    async def hog(ctx: RunContext) -> str:
        await claiming.wait()
        deadline = time.monotonic() + 1.0  # CPU-bound work: blocks the loop for 10 beats
        while time.monotonic() < deadline:
            pass
        return "hogged"

    @engine.task(id="victim")
    async def victim(ctx: RunContext) -> str:
        executions.append(ctx.attempt)
        return "done"

    storage = await engine.open()
    claim_runs = storage.claim_runs
    armed = False

    async def watched_claim(*args: Any, **kwargs: Any) -> list[Run]:
        nonlocal armed
        if armed:
            armed = False
            claiming.set()  # hog blocks the loop once this claim has been sent
        return await claim_runs(*args, **kwargs)

    storage.claim_runs = watched_claim  # type: ignore[method-assign]
    await engine.start()
    hogging = await hog.trigger(None)
    worker = engine._worker  # pyright: ignore[reportPrivateUsage]
    assert worker is not None
    await wait_until(lambda: bool(worker.active), what="hog to start")
    handle = await victim.trigger(None, delay=60)  # due only once the clock moves
    armed = True
    clock.advance(61)
    engine.wake()
    assert await hogging.result(timeout=10) == "hogged"
    assert await handle.result(timeout=10) == "done"
    run = await engine.get_run(handle.id)
    assert (run.attempt, executions) == (1, [1])
    assert "lease_released" not in types(await engine.events(handle.id))
