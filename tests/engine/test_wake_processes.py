"""Wake-ups across processes: a worker process that polls only every 30 s still starts new
runs, stops cancelled ones and reports finished ones within moments — LISTEN/NOTIFY on
PostgreSQL, Unix datagram sockets on a SQLite file (`perdure.storage.wake`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perdure import RunStatus
from perdure.storage import CHANNEL_FINISHED
from tests.storage.test_events import Heard

from .apps.worker_app import build_engine
from .conftest import WorkerProcesses
from .support import wait_until

#: Far longer than any wait below: only a wake-up can make these tests pass in time.
SLOW = {"poll_interval": 30, "heartbeat": 20, "lease": 60}
#: How soon a woken process must have acted (generous: 2 shared cores, other test suites).
PROMPT = 5.0
#: Starting a worker process (imports, migrations check) before its first claim.
STARTUP = 30.0


async def test_an_idle_worker_process_starts_new_runs_and_we_hear_them_finish(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url, **SLOW)  # triggers and reads; runs no worker
    quick = client.get_task("quick")
    heard = Heard()
    (await client.open()).add_listener(heard)
    try:
        worker_processes.start("run_worker.py", json.dumps(SLOW))
        first = await quick.trigger("first")  # may be found by the worker's first claim
        await wait_until(
            lambda: worker_processes.started(first.id, 1), timeout=STARTUP, what="worker start"
        )
        # From here on the worker is idle, waiting out its 30 s poll.
        for i in range(3):
            handle = await quick.trigger(f"run {i}")
            await wait_until(
                lambda run_id=handle.id: worker_processes.started(run_id, 1),
                timeout=PROMPT,
                what=f"the idle worker process to start run {i}",
            )
            await heard.wait_for(CHANNEL_FINISHED, handle.id, timeout=PROMPT)
            assert await handle.result(timeout=PROMPT) == f"run {i} done"
    finally:
        await client.shutdown()


async def test_a_cancel_from_this_process_stops_the_attempt_in_the_worker_process(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url, **SLOW)
    cancellable = client.get_task("cancellable")
    try:
        worker_processes.start("run_worker.py", json.dumps(SLOW))
        handle = await cancellable.trigger(None)
        await wait_until(
            lambda: worker_processes.started(handle.id, 1), timeout=STARTUP, what="worker start"
        )
        await client.cancel(handle.id, "stop from the test process")

        # The heartbeat's ownership check would notice only after 20 s.
        marker = worker_processes.markers / f"{handle.id}.stopped"
        await wait_until(marker.exists, timeout=PROMPT, what="the worker's task to be stopped")
        assert marker.read_text() == "CancelledError ctx.cancelled=True"
        assert (await handle.get()).status is RunStatus.CANCELLED
    finally:
        await client.shutdown()


def wake_sockets(url: str) -> list[str]:
    directory = Path(url.removeprefix("sqlite:///") + "-wake")
    return sorted(p.name for p in directory.glob("*.sock")) if directory.exists() else []


async def test_a_killed_worker_process_leaves_no_socket_that_breaks_triggering(
    worker_processes: WorkerProcesses, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's wake-up sockets only")
    client = build_engine(worker_processes.url, **SLOW)
    quick = client.get_task("quick")
    try:
        await client.open()
        (ours,) = wake_sockets(worker_processes.url)
        proc = worker_processes.start("run_worker.py", json.dumps(SLOW))
        await wait_until(
            lambda: len(wake_sockets(worker_processes.url)) == 2,
            timeout=STARTUP,
            what="the worker process to listen",
        )
        proc.kill()  # SIGKILL: no cleanup, its socket file stays behind
        proc.wait(timeout=10)
        assert len(wake_sockets(worker_processes.url)) == 2

        handle = await quick.trigger("after the crash")

        assert (await handle.get()).status is RunStatus.QUEUED
        assert wake_sockets(worker_processes.url) == [ours]  # the dead one was removed
        worker_processes.start("run_worker.py", json.dumps(SLOW))
        assert await handle.result(timeout=STARTUP) == "after the crash done"
    finally:
        await client.shutdown()
