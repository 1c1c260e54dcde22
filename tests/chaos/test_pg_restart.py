"""Riding out a PostgreSQL restart: a `perdure worker` process keeps running while its
database goes away mid-work (an immediate stop, i.e. a crash as far as clients can tell), logs
the outage once, and resumes within seconds when the database is back; every run completes.

The database is a private cluster (tests/chaos/pgcluster.py): the machine's main cluster
serves the other tests and is never restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from perdure import Engine, RunContext, RunStatus, StorageError

from .apps.restart_app import LONG, TASK_ID
from .pgcluster import PostgresCluster

APPS = Path(__file__).parent / "apps"
LEASE = 2.0
OUTAGE = 2.5  # seconds the database stays down: longer than a lease
RESUME_WITHIN = 10.0  # seconds from the database's return to the worker's first progress
STARTUP = 20.0


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


@pytest.fixture
def cli_worker(cluster_url: str, worker_log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`perdure worker restart_app:engine` on the private cluster; its stderr goes to a file."""
    env = {**os.environ, "PERDURE_DATABASE_URL": cluster_url, "PYTHONUNBUFFERED": "1"}
    with worker_log.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perdure", "worker", "restart_app:engine",
             "--lease", str(LEASE), "--heartbeat", "0.5", "--poll-interval", "0.2",
             "--concurrency", "10", "--shutdown-grace", "1"],
            cwd=APPS, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        print(text(worker_log))


def text(path: Path) -> str:
    return path.read_text(errors="replace")


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT status, count(*) FROM perdure_runs GROUP BY status")
        return {status: n for status, n in rows}


def step_recorded(url: str, run_id: str) -> bool:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM perdure_events WHERE run_id = %s AND type = 'step_recorded'",
            (run_id,),
        ).fetchone()
    return row is not None and row[0] > 0


def first_progress_after(url: str, moment: float) -> float | None:
    """When the first run made progress (started, recorded a step, finished) after `moment`."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT min(at) FROM perdure_events WHERE at > %s "
            "AND type IN ('attempt_started', 'step', 'completed')",
            (moment,),
        ).fetchone()
    return None if row is None else row[0]


async def wait_for(what: str, timeout: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def trigger(url: str, inputs: list[int], priority: int = 0) -> list[str]:
    client = Engine(url)  # a fresh connection each time: the cluster restarts in between
    try:
        return [(await client.trigger(TASK_ID, n, priority=priority)).id for n in inputs]
    finally:
        await client.close()


@pytest.mark.timeout(120)
async def test_worker_rides_out_a_postgres_restart_and_every_run_completes(
    pg_cluster: PostgresCluster,
    cluster_url: str,
    cli_worker: subprocess.Popen[bytes],
    worker_log: Path,
) -> None:
    await wait_for("the worker to start", STARTUP, lambda: "started:" in text(worker_log))
    first = await trigger(cluster_url, list(range(40)))
    # Mid-work: some runs finished, others are running (10 slots, 0.3 s each).
    await wait_for(
        "a few runs to complete", 20, lambda: counts(cluster_url).get("completed", 0) >= 10
    )
    assert counts(cluster_url).get("running", 0) > 0
    # This one records its step, then finishes while the database is down: its outcome must
    # wait for the database and commit then (no lost lease, no second attempt).
    (finishing,) = await trigger(cluster_url, [LONG], priority=10)
    await wait_for("the long run's step", 10, lambda: step_recorded(cluster_url, finishing))

    pg_cluster.stop("immediate")
    await asyncio.sleep(OUTAGE)
    assert cli_worker.poll() is None, "the worker process exited while the database was down"
    pg_cluster.start()
    back = time.time()

    await wait_for(
        "every run to complete after the restart",
        30,
        lambda: counts(cluster_url).get("completed", 0) == len(first) + 1,
    )
    resumed = first_progress_after(cluster_url, back)
    assert resumed is not None
    assert resumed - back < RESUME_WITHIN, f"resumed {resumed - back:.1f}s after the restart"

    # New work is picked up as before.
    later = await trigger(cluster_url, [100, 101, 102])
    await wait_for(
        "runs triggered after the restart",
        10,
        lambda: counts(cluster_url).get("completed", 0) == len(first) + 1 + len(later),
    )
    assert counts(cluster_url) == {RunStatus.COMPLETED.value: len(first) + 1 + len(later)}
    with psycopg.connect(cluster_url) as conn:
        outputs = dict(conn.execute("SELECT id, output FROM perdure_runs").fetchall())
        completions = conn.execute(
            "SELECT run_id, count(*) FROM perdure_events WHERE type = 'completed' "
            "GROUP BY run_id HAVING count(*) <> 1"
        ).fetchall()
    assert completions == []  # no run completed twice
    assert sorted(int(outputs[i]) for i in first) == [2 * n + 1 for n in range(40)]
    with psycopg.connect(cluster_url) as conn:
        long_run = conn.execute(
            "SELECT output, attempt, lost_leases FROM perdure_runs WHERE id = %s", (finishing,)
        ).fetchone()
    assert long_run == (str(2 * LONG + 1), 1, 0)

    assert cli_worker.poll() is None, "the worker process exited"
    cli_worker.send_signal(signal.SIGTERM)
    assert cli_worker.wait(timeout=20) == 0
    log = text(worker_log)
    assert "Traceback" not in log, log
    # One line when the outage began and one when it ended, however many calls failed.
    assert log.count("database unreachable (") == 1, log
    assert log.count("database reachable again after") == 1, log


@pytest.mark.timeout(60)
async def test_a_worker_that_failed_to_start_while_the_database_was_down_starts_later(
    pg_cluster: PostgresCluster, cluster_url: str
) -> None:
    engine = Engine(cluster_url, lease=LEASE, heartbeat=0.5, poll_interval=0.2)

    @engine.task(id="ping")
    async def ping(ctx: RunContext) -> str:
        return "pong"

    await engine.open()  # connected; then the database goes away before the worker starts
    try:
        pg_cluster.stop("immediate")
        with pytest.raises(StorageError):
            await engine.start()
        assert engine.worker_id is None
        pg_cluster.start()
        # Each start() tries again (the pool may take a moment to reconnect), instead of
        # keeping the worker that never started.
        deadline = time.monotonic() + 15
        while engine.worker_id is None:
            try:
                await engine.start()
            except StorageError:
                assert time.monotonic() < deadline, "the worker never started"
                await asyncio.sleep(0.2)
        handle = await ping.trigger(None)
        assert await handle.result(timeout=20) == "pong"
    finally:
        await engine.shutdown(grace=1)
