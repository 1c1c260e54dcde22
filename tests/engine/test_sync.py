"""Blocking twins (`*_sync`) for code without an event loop (scripts, Django, Flask) and for
`def` task bodies; refused, with a pointer to the async form, inside a running loop."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from perdure import Engine, RunCancelledError, RunContext, RunStatus, SyncInAsyncError

from .support import BackgroundWorker

MakeSyncEngine = Callable[..., Engine]


def define_tasks(engine: Engine) -> None:
    @engine.task(id="double")
    def double(ctx: RunContext, n: int) -> int:
        return n * 2

    @engine.task(id="inspect-self")
    def inspect_self(ctx: RunContext) -> str:
        # A `def` body runs in the worker's thread pool and may call the engine's sync twins.
        run = engine.get_run_sync(ctx.run_id)
        child = engine.trigger_sync("double", 21)
        return f"{run.status.value}/{run.attempt}/{child.result_sync(timeout=10)}"


def test_trigger_sync_and_result_sync_from_plain_code(sync_engines: MakeSyncEngine) -> None:
    engine = sync_engines()
    define_tasks(engine)
    double = engine.get_task("double")

    with BackgroundWorker(engine):
        handle = double.trigger_sync(21)
        assert handle.result_sync(timeout=10) == 42
        run = handle.get_sync()
        assert run.status is RunStatus.COMPLETED
        assert handle.wait_sync(timeout=10) == run
        assert engine.get_run_sync(handle.id) == run
        assert [e.type for e in handle.events_sync()] == ["created", "attempt_started", "completed"]
        assert handle.id in {r.id for r in engine.list_runs_sync(task_id="double").runs}

        by_id = engine.trigger_sync("double", 5)
        assert by_id.result_sync(timeout=10) == 10

        batch = double.batch_trigger_sync([1, 2, 3])
        assert [h.result_sync(timeout=10) for h in batch] == [2, 4, 6]

        later = double.trigger_sync(1, delay=3600)
        assert later.cancel_sync().status is RunStatus.CANCELLED
        with pytest.raises(RunCancelledError):
            later.result_sync(timeout=10)


def test_def_task_body_can_call_sync_twins(sync_engines: MakeSyncEngine) -> None:
    engine = sync_engines()
    define_tasks(engine)

    with BackgroundWorker(engine):
        handle = engine.get_task("inspect-self").trigger_sync(None)
        assert handle.result_sync(timeout=10) == "running/1/42"


def test_sync_trigger_without_a_worker_stores_the_run(sync_engines: MakeSyncEngine) -> None:
    engine = sync_engines()
    define_tasks(engine)

    handle = engine.get_task("double").trigger_sync(4)
    run = engine.get_run_sync(handle.id)
    assert run.status is RunStatus.QUEUED
    assert run.input == 4
    with pytest.raises(TimeoutError):
        handle.result_sync(timeout=0.1)


async def test_sync_twins_inside_a_running_loop_name_the_async_form(engine: Engine) -> None:
    define_tasks(engine)
    double = engine.get_task("double")

    with pytest.raises(SyncInAsyncError) as info:
        double.trigger_sync(1)
    message = str(info.value)
    assert "await" in message
    assert "trigger" in message
    assert "await trigger(" in message

    handle = await double.trigger(1)
    with pytest.raises(SyncInAsyncError, match=r"await result\("):
        handle.result_sync(timeout=1)
    with pytest.raises(SyncInAsyncError, match=r"await get_run\("):
        engine.get_run_sync(handle.id)
    with pytest.raises(SyncInAsyncError, match=r"await cancel\("):
        handle.cancel_sync()
    # Nothing ran: the run is as the async trigger left it.
    assert (await handle.get()).status is RunStatus.QUEUED
