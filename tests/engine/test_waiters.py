"""Callers waiting on many runs share one reader: a read covers every run it can."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from perdure import Engine, Run, RunContext, RunNotFoundError, RunStatus
from perdure.storage import CHANNEL_FINISHED

from .conftest import MakeEngine
from .test_look_again import hear_only_look_again


def count_reads(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many runs each of the engine's waiter reads asked for."""
    sizes: list[int] = []
    read_runs = engine._read_runs  # pyright: ignore[reportPrivateUsage]

    async def counting(run_ids: Sequence[str], known: bool) -> dict[str, Run | None]:
        sizes.append(len(run_ids))
        return await read_runs(run_ids, known)

    monkeypatch.setattr(engine, "_read_runs", counting)
    return sizes


async def test_waiting_on_many_runs_reads_them_together(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()

    @engine.task(id="held")
    async def held(ctx: RunContext, n: int) -> int:
        await release.wait()
        return n * 2

    reads = count_reads(engine, monkeypatch)
    async with engine:
        handles = await held.batch_trigger(list(range(50)))
        waiting = asyncio.gather(*(h.result(timeout=30) for h in handles))
        await asyncio.sleep(0)  # every caller registers before the first read
        release.set()
        assert await asyncio.wait_for(waiting, 30) == [n * 2 for n in range(50)]
    # One read per caller would be 50 before any run finished, and 50 more as they finished.
    assert reads[0] == 50
    assert len(reads) < 25, reads


async def test_a_waiter_for_an_unknown_run_is_told(engine: Engine) -> None:
    await engine.open()  # a client: no worker
    with pytest.raises(RunNotFoundError, match="run_missing"):
        await engine.handle("run_missing").wait(timeout=5)


async def test_a_timed_out_wait_names_the_status_and_leaves_the_others(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()
    release = asyncio.Event()

    @engine.task(id="held")
    async def held(ctx: RunContext, n: int) -> str:
        await release.wait()
        return "done"

    async with engine:
        first, second = await held.trigger(1), await held.trigger(2)
        patient = asyncio.create_task(second.result(timeout=30))
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.2s \(status running\)"):
            await first.wait(timeout=0.2)
        release.set()
        assert await asyncio.wait_for(patient, 30) == "done"
        assert (await first.wait(timeout=30)).status is RunStatus.COMPLETED


async def test_without_notifications_a_new_wait_is_polled_soon_however_long_others_waited(
    make_engine: MakeEngine, shared_url: str
) -> None:
    """Another process's "finished" notifications never arrive (a platform without SQLite
    wake-ups): a caller that starts waiting while others have waited long is still polled
    within tens of milliseconds, as if it waited alone, not at the others' slowed pace."""
    worker = make_engine()
    release = asyncio.Event()

    @worker.task(id="held")
    async def held(ctx: RunContext, n: int) -> int:
        if n == 0:
            await release.wait()
        return n

    client = make_engine(poll_interval=30)
    hear_only_look_again(client, await client.open(), CHANNEL_FINISHED)
    async with worker:
        long_wait = asyncio.create_task(client.handle((await held.trigger(0)).id).wait(60))
        await asyncio.sleep(3)  # the shared poll has slowed to waits of 1.28 s and more
        quick = await held.trigger(1)
        started = asyncio.get_running_loop().time()
        assert (await client.handle(quick.id).wait(timeout=30)).status is RunStatus.COMPLETED
        assert asyncio.get_running_loop().time() - started < 1.0
        release.set()
        assert (await long_wait).status is RunStatus.COMPLETED


async def test_a_poll_reads_only_the_waited_runs_that_finished(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a read has found a waited run, later reads ask only for it if finished: a poll
    over many unfinished runs builds no snapshot of them."""
    release = asyncio.Event()
    returned: list[tuple[bool, int, int]] = []  # (known, runs asked, snapshots returned)
    read_runs = engine._read_runs  # pyright: ignore[reportPrivateUsage]

    async def recording(run_ids: Sequence[str], known: bool) -> dict[str, Run | None]:
        found = await read_runs(run_ids, known)
        snapshots = sum(run is not None for run in found.values())
        returned.append((known, len(run_ids), snapshots))
        return found

    monkeypatch.setattr(engine, "_read_runs", recording)

    @engine.task(id="held")
    async def held(ctx: RunContext, n: int) -> int:
        await release.wait()
        return n

    async with engine:
        handles = await held.batch_trigger(list(range(20)))
        waiting = asyncio.gather(*(h.result(timeout=30) for h in handles))
        await asyncio.sleep(0.2)  # the first read, then polls at 10, 30, 70, 150 ms
        before_release = len(returned)
        release.set()
        assert await asyncio.wait_for(waiting, 30) == list(range(20))

    assert returned[0] == (False, 20, 0)  # looked up once: all exist, none finished
    polls = returned[1:before_release]
    assert polls, returned  # the safety poll read them again before the release
    assert all(r == (True, 20, 0) for r in polls), returned
