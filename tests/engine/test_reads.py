"""Reading runs through the engine: snapshots, listing with filters and cursor paging,
unknown ids, and idempotent triggers."""

from __future__ import annotations

import pytest

from perdure import (
    Engine,
    InvalidOptionError,
    NonRetryableError,
    RunContext,
    RunNotFoundError,
    RunPage,
    RunStatus,
)


async def test_run_snapshot_carries_the_trigger_options(engine: Engine) -> None:
    @engine.task(id="resize", queue="images")
    async def resize(ctx: RunContext, size: int) -> int:
        return size

    handle = await resize.trigger(
        64,
        priority=7,
        tags=["user:7", "batch:3"],
        metadata={"source": "upload"},
        idempotency_key="img-42",
        concurrency_key="user-7",
    )
    run = await handle.get()
    assert run.id == handle.id
    assert run.task_id == "resize"
    assert run.status is RunStatus.QUEUED
    assert run.attempt == 0
    assert run.input == 64
    assert run.queue == "images"
    assert run.priority == 7
    assert run.tags == ["user:7", "batch:3"]
    assert run.metadata == {"source": "upload"}
    assert run.idempotency_key == "img-42"
    assert run.concurrency_key == "user-7"
    assert run.parent_id is None
    assert run.root_id == run.id
    assert run.started_at is None
    assert run.finished_at is None
    assert run.created_at.tzinfo is not None

    moved = await resize.trigger(1, queue="thumbnails")
    assert (await moved.get()).queue == "thumbnails"


async def test_idempotency_key_returns_the_first_run(engine: Engine) -> None:
    @engine.task(id="charge")
    async def charge(ctx: RunContext, cents: int) -> int:
        return cents

    first = await charge.trigger(100, idempotency_key="order-1")
    again = await charge.trigger(100, idempotency_key="order-1")
    other = await charge.trigger(100, idempotency_key="order-2")
    assert again.id == first.id
    assert other.id != first.id
    assert len((await engine.list_runs(task_id="charge")).runs) == 2


async def test_get_run_of_an_unknown_id_raises_not_found(engine: Engine) -> None:
    with pytest.raises(RunNotFoundError) as info:
        await engine.get_run("run_does_not_exist")
    assert info.value.run_id == "run_does_not_exist"
    assert "run_does_not_exist" in str(info.value)
    with pytest.raises(RunNotFoundError):
        await engine.handle("run_does_not_exist").get()
    with pytest.raises(RunNotFoundError):
        await engine.handle("run_does_not_exist").result(timeout=1)


async def test_list_runs_filters_by_task_status_and_queue(engine: Engine) -> None:
    @engine.task(id="ok")
    async def ok(ctx: RunContext) -> str:
        return "fine"

    @engine.task(id="bad", queue="risky")
    async def bad(ctx: RunContext) -> None:
        raise NonRetryableError("broken")

    async with engine:
        oks = [await ok.trigger(None) for _ in range(3)]
        bads = [await bad.trigger(None) for _ in range(2)]
        for handle in [*oks, *bads]:
            await handle.wait(timeout=10)
        pending = await ok.trigger(None, delay=3600)

        everything = await engine.list_runs()
        by_task = await engine.list_runs(task_id="ok")
        failed = await engine.list_runs(status="failed")
        completed_ok = await engine.list_runs(task_id="ok", status="completed")
        risky = await engine.list_runs(queue="risky")
        delayed = await engine.list_runs(status="delayed")
        nothing = await engine.list_runs(task_id="ok", status="failed")

    def ids(page: RunPage) -> set[str]:
        return {run.id for run in page.runs}

    assert ids(everything) == {h.id for h in [*oks, *bads, pending]}
    assert ids(by_task) == {h.id for h in [*oks, pending]}
    assert ids(failed) == {h.id for h in bads}
    assert all(run.status is RunStatus.FAILED for run in failed.runs)
    assert ids(completed_ok) == {h.id for h in oks}
    assert ids(risky) == {h.id for h in bads}
    assert ids(delayed) == {pending.id}
    assert nothing.runs == []
    assert nothing.next_cursor is None


async def test_list_runs_pages_newest_first_with_a_cursor(engine: Engine) -> None:
    @engine.task(id="page")
    async def page(ctx: RunContext, n: int) -> int:
        return n

    handles = [await page.trigger(n) for n in range(7)]
    newest_first = [h.id for h in reversed(handles)]

    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 7 runs in pages of 3 is 3 pages
        result = await engine.list_runs(limit=3, cursor=cursor)
        seen.extend(run.id for run in result.runs)
        sizes.append(len(result.runs))
        cursor = result.next_cursor
        if cursor is None:
            break

    assert sizes == [3, 3, 1]
    assert seen == newest_first
    assert [run.input for run in (await engine.list_runs(limit=2)).runs] == [6, 5]

    exact = await engine.list_runs(limit=7)
    assert len(exact.runs) == 7
    assert exact.next_cursor is None


async def test_list_runs_rejects_invalid_filters(engine: Engine) -> None:
    with pytest.raises(InvalidOptionError) as info:
        await engine.list_runs(status="finished")
    assert info.value.option == "status"
    assert "completed" in str(info.value)  # lists the allowed statuses
    for limit in (0, 1001, "10"):
        with pytest.raises(InvalidOptionError) as info:
            await engine.list_runs(limit=limit)  # type: ignore[arg-type]
        assert info.value.option == "limit"
