"""The worker's dispatch: attempts run in parallel up to `concurrency`, a task that blocks
the event loop keeps its lease, and runs triggered by id from a client without the task's
code are run by the worker that has it."""

from __future__ import annotations

import asyncio
import threading
import time

from perdure import Engine, RunContext, RunStatus

from .conftest import MakeEngine
from .support import BackgroundWorker, wait_until


async def test_attempts_run_in_parallel_up_to_the_concurrency_limit(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(concurrency=2)
    running = 0
    peak = 0
    gate = asyncio.Event()

    @engine.task(id="gated")
    async def gated(ctx: RunContext, n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await gate.wait()
        finally:
            running -= 1
        return n

    async with engine:
        handles = await gated.batch_trigger(list(range(5)))
        await wait_until(lambda: running == 2, what="two attempts to run at once")
        statuses = [(await h.get()).status for h in handles]
        assert statuses.count(RunStatus.RUNNING) == 2
        assert statuses.count(RunStatus.QUEUED) == 3
        gate.set()
        assert [await h.result(timeout=10) for h in handles] == [0, 1, 2, 3, 4]
    assert peak == 2


async def test_dispatch_does_not_wait_for_a_running_attempt(engine: Engine) -> None:
    """A long attempt does not hold up the next one (one task per attempt)."""
    release = asyncio.Event()

    @engine.task(id="long")
    async def long(ctx: RunContext) -> str:
        await release.wait()
        return "long"

    @engine.task(id="short")
    async def short(ctx: RunContext) -> str:
        return "short"

    async with engine:
        slow = await long.trigger(None)
        assert await (await short.trigger(None)).result(timeout=10) == "short"
        assert (await slow.get()).status is RunStatus.RUNNING
        release.set()
        assert await slow.result(timeout=10) == "long"


async def test_task_blocking_the_event_loop_keeps_its_lease(
    make_engine: MakeEngine, shared_url: str
) -> None:
    """CPU-bound code must not look dead: the heartbeat runs in its own thread, so another
    engine sweeping for expired leases while the worker's loop is blocked finds none."""
    worker_engine = make_engine(lease=1.5, heartbeat=0.2)
    started = threading.Event()

    @worker_engine.task(id="cpu-bound")
    async def cpu_bound(ctx: RunContext) -> str:
        started.set()
        time.sleep(3.2)  # noqa: ASYNC251 -- blocks the worker's event loop for 2 leases
        return "crunched"

    sweeper = make_engine()
    with BackgroundWorker(worker_engine):
        handle = await sweeper.trigger("cpu-bound")
        await wait_until(started.is_set, what="the attempt to start")
        for _ in range(40):  # sweep every 0.1 s while the worker's loop is blocked
            await sweeper.run_maintenance()
            run = await sweeper.get_run(handle.id)
            if run.status is not RunStatus.RUNNING:
                break
            await asyncio.sleep(0.1)
        run = await sweeper.handle(handle.id).wait(timeout=10)

    assert run.status is RunStatus.COMPLETED
    assert run.output == "crunched"
    assert run.attempt == 1
    assert run.lost_leases == 0


async def test_client_without_the_code_triggers_by_id_and_a_worker_runs_it(
    make_engine: MakeEngine, shared_url: str
) -> None:
    worker = make_engine()

    @worker.task(id="greet")
    async def greet(ctx: RunContext, name: str) -> str:
        return f"hello {name}"

    client = make_engine()  # defines no tasks: finds "greet" in the catalog workers register
    async with worker:
        handle = await client.trigger("greet", "ada")
        assert await handle.result(timeout=10) == "hello ada"


async def test_stored_input_that_does_not_match_the_task_fails_without_retry(
    make_engine: MakeEngine, shared_url: str
) -> None:
    """A client that triggers by id cannot check the input type; the worker refuses to run
    the body with it and fails the run at once with the validation error."""
    worker = make_engine()
    calls: list[int] = []

    @worker.task(id="count")
    async def count_task(ctx: RunContext, n: int) -> int:
        calls.append(n)
        return n

    client = make_engine()
    async with worker:
        handle = await client.trigger("count", "not a number")
        run = await handle.wait(timeout=10)

    assert calls == []
    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "InputValidationError"
    assert run.error.retryable is False
    assert "'count'" in run.error.message
