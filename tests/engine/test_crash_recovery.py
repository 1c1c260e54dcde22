"""Crash recovery with real processes: a worker killed with SIGKILL mid-run loses nothing;
its lease expires and another worker process runs the run again."""

from __future__ import annotations

import os
import signal
import time

from perdure import RunStatus

from .apps.worker_app import LEASE, build_engine
from .conftest import WorkerProcesses
from .support import count, wait_for_status, wait_until


async def test_run_of_a_sigkilled_worker_is_completed_by_another_worker(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url)  # triggers and reads; runs no worker
    try:
        handle = await client.get_task("crashy").trigger("job-1")
        first = worker_processes.start()
        await wait_until(
            lambda: worker_processes.started(handle.id, 1),
            timeout=20,
            what="the first worker process to start the run",
        )
        running = await wait_for_status(client, handle.id, RunStatus.RUNNING)
        assert running.attempt == 1
        first_worker_id = running.lease_owner
        assert first_worker_id is not None

        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        killed_at = time.monotonic()
        # Nothing was written at the kill: the database still says the run is running.
        assert (await handle.get()).status is RunStatus.RUNNING

        second = worker_processes.start()
        run = await handle.wait(timeout=LEASE + 5)
        assert time.monotonic() - killed_at < LEASE + 5
        events = await handle.events()

        assert run.status is RunStatus.COMPLETED, run.error
        assert run.output == f"job-1 done by pid {second.pid} on attempt 2"
        assert run.attempt == 2
        assert run.lost_leases == 1
        # The first execution started exactly once, in the killed process; the second in
        # the new one.
        assert worker_processes.starts(handle.id) == [(1, first.pid), (2, second.pid)]
        assert count(events, "lease_lost") == 1
        lost = next(e for e in events if e.type == "lease_lost")
        assert lost.data["worker_id"] == first_worker_id
        assert lost.data["attempt"] == 1
        assert [e.type for e in events][-1] == "completed"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finally:
        await client.shutdown()


async def test_runs_triggered_while_no_worker_is_alive_all_complete_after_a_restart(
    worker_processes: WorkerProcesses,
) -> None:
    """Persist before acknowledging: runs triggered while the only worker is dead are
    stored, and they and the run it was executing all complete once a worker comes back."""
    client = build_engine(worker_processes.url)
    try:
        victim = await client.get_task("crashy").trigger("victim")
        first = worker_processes.start()
        await wait_until(lambda: worker_processes.started(victim.id, 1), timeout=20)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)

        later = await client.get_task("quick").batch_trigger(["a", "b", "c"])
        for handle in later:
            assert (await handle.get()).status is RunStatus.QUEUED

        worker_processes.start()
        outputs = [await handle.result(timeout=LEASE + 5) for handle in later]
        assert outputs == ["a done", "b done", "c done"]
        run = await victim.wait(timeout=LEASE + 5)
        assert run.status is RunStatus.COMPLETED
        assert run.attempt == 2
    finally:
        await client.shutdown()
