"""Notifications without a payload ("look again": an oversized batch, a LISTEN reconnect, a
SQLite peer whose socket buffer overflowed): an empty `cancel` makes the worker check its
leases at once, and an empty `finished` makes every `handle.result()` waiter read again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import pytest

from perdure import Engine, Run, RunCancelledError, RunContext, RunStatus, SystemClock
from perdure.engine.heartbeat import Attempts, Heartbeat
from perdure.storage import CHANNEL_CANCEL, CHANNEL_FINISHED, Storage, make_storage

from .conftest import MakeEngine, is_memory
from .support import wait_for_status, wait_until

#: Far longer than any wait below: only the "look again" notification can make these pass.
SLOW = {"poll_interval": 60, "heartbeat": 60, "lease": 120, "shutdown_grace": 1}


def hear_only_look_again(engine: Engine, storage: Storage, channel: str) -> asyncio.Event:
    """From now on `engine` hears `channel` only without a payload: notifications naming a
    run are dropped, as if missed. The returned event is set when one was dropped."""
    loop = asyncio.get_running_loop()
    dropped = asyncio.Event()
    listener: Callable[[str, str], None] = engine._on_notification

    def filtered(heard: str, payload: str) -> None:
        if heard == channel and payload:
            loop.call_soon_threadsafe(dropped.set)
        else:
            listener(heard, payload)

    storage.remove_listener(listener)
    storage.add_listener(filtered)
    return dropped


async def test_an_empty_cancel_notification_stops_the_cancelled_attempt_at_once(
    make_engine: MakeEngine, backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The heartbeat's first check runs when the worker starts, on its own thread: it must be
    # over before the cancel, or it (not the look-again) finds the cancelled run.
    beaten = threading.Event()
    beat = Heartbeat._beat  # pyright: ignore[reportPrivateUsage]

    async def beat_and_tell(self: Heartbeat, storage: Storage) -> None:
        await beat(self, storage)
        beaten.set()

    monkeypatch.setattr(Heartbeat, "_beat", beat_and_tell)
    worker = make_engine(**SLOW)
    started = asyncio.Event()
    stopped = asyncio.Event()
    release = asyncio.Event()

    @worker.task(id="long")
    async def long(ctx: RunContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    @worker.task(id="bystander")
    async def bystander(ctx: RunContext) -> str:
        await release.wait()
        return "kept"

    dropped = hear_only_look_again(worker, await worker.open(), CHANNEL_CANCEL)
    # Another process cancels; memory:// is private to the worker's engine, which cancels.
    canceller = worker if is_memory(backend_url) else make_engine()
    async with worker:
        handle = await long.trigger(None)
        other = await bystander.trigger(None)
        await asyncio.wait_for(started.wait(), 10)
        await wait_for_status(worker, other.id, RunStatus.RUNNING)
        await wait_until(beaten.is_set, what="the heartbeat's first check")

        assert (await canceller.cancel(handle.id)).status is RunStatus.CANCELLED
        await asyncio.wait_for(dropped.wait(), 10)  # the notification naming the run: missed
        assert not stopped.is_set()

        (await worker.open()).db._dispatch([(CHANNEL_CANCEL, ""), (CHANNEL_CANCEL, "")])
        await asyncio.wait_for(stopped.wait(), 3)
        with pytest.raises(RunCancelledError):
            await handle.result(timeout=10)
        # The attempt still leased to this worker was left alone.
        release.set()
        assert await other.result(timeout=10) == "kept"


async def test_an_empty_finished_notification_wakes_every_result_waiter(
    make_engine: MakeEngine, shared_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_engine()
    release = asyncio.Event()

    @worker.task(id="held")
    async def held(ctx: RunContext, n: int) -> int:
        await release.wait()
        return n

    client = make_engine(**SLOW)
    dropped = hear_only_look_again(client, await client.open(), CHANNEL_FINISHED)
    # The waiters' shared poll doubles from 10 ms: after its 9th read of the runs it waits 2.56 s.
    reads: dict[str, int] = {}
    parked = asyncio.Event()
    read_runs = client._read_runs  # pyright: ignore[reportPrivateUsage]

    async def counting_read_runs(run_ids: Sequence[str], known: bool) -> dict[str, Run | None]:
        for run_id in run_ids:
            reads[run_id] = reads.get(run_id, 0) + 1
        if len(reads) == 2 and min(reads.values()) >= 9:
            parked.set()
        return await read_runs(run_ids, known)

    monkeypatch.setattr(client, "_read_runs", counting_read_runs)
    async with worker:
        handles = [await held.trigger(n) for n in (1, 2)]
        waiters = [asyncio.create_task(client.handle(h.id).result(timeout=30)) for h in handles]
        await asyncio.wait_for(parked.wait(), 10)
        release.set()
        for handle in handles:
            await handle.result(timeout=10)
        await asyncio.wait_for(dropped.wait(), 10)  # the notifications naming the runs: missed

        (await client.open()).db._dispatch([(CHANNEL_FINISHED, "")])
        _, pending = await asyncio.wait(waiters, timeout=1)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert not pending, "a result() waiter did not read again"
        assert [task.result() for task in waiters] == [1, 2]


async def test_pokes_that_arrive_together_share_one_check(backend_url: str) -> None:
    """Beats on its own thread with its own connection, or on the loop for memory://."""
    storage = make_storage(backend_url)
    await storage.open()
    checks: list[Attempts] = []
    checked = threading.Event()

    def on_lost(lost: Attempts) -> None:
        checks.append(lost)
        checked.set()

    heartbeat = Heartbeat(
        storage=storage,
        worker_id="worker-1",
        lease=120,
        interval=60,
        check_interval=60,
        clock=SystemClock(),
        snapshot=lambda: [("run_gone", 1)],  # never leased to anyone: every check reports it
        on_lost=on_lost,
    )
    heartbeat.start()
    try:
        await wait_until(checked.is_set, what="the check at start")
        checked.clear()
        for _ in range(20):
            heartbeat.check_now()
        await wait_until(checked.is_set, what="the poked check")
    finally:
        await heartbeat.stop()
        await storage.close()
    # The first poke starts a check; the rest are served by it or, landing just after it
    # started, by one more.
    assert 2 <= len(checks) <= 3
    assert checks[-1] == [("run_gone", 1)]
