"""Acceptance: two `perdure worker` processes on one PostgreSQL database share the work, and
when one is SIGKILLed the other finishes everything, the dead one's runs included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perdure import Engine, Run, RunStatus

pytestmark = pytest.mark.postgres

APP_SOURCE = textwrap.dedent(
    """
    import asyncio

    from perdure import Engine, RunContext

    engine = Engine()  # PERDURE_DATABASE_URL points at the test's database


    @engine.task(id="share")
    async def share(ctx: RunContext, n: int) -> int:
        await asyncio.sleep(0.3)
        return n * n
    """
)
RUNS = 80
LEASE = 2.0
STARTUP = 20.0


class CliWorker:
    """One `perdure worker` subprocess; its worker id is read from its startup log line."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def worker_id(self) -> str | None:
        found = re.search(r"worker (wkr_\w+) started", self.log.read_text(errors="replace"))
        return None if found is None else found.group(1)


StartWorker = Callable[[], CliWorker]
Progress = list[tuple[Run, list[str], list[str]]]


@pytest.fixture
def start_worker(pg_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker()` runs `python -m perdure worker cli_share_app:engine` on `pg_url`."""
    (tmp_path / "cli_share_app.py").write_text(APP_SOURCE)
    workers: list[CliWorker] = []

    def start() -> CliWorker:
        log = tmp_path / f"worker-{len(workers)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "perdure", "worker", "cli_share_app:engine",
                 "--lease", str(LEASE), "--heartbeat", "0.5", "--poll-interval", "0.2",
                 "--concurrency", "4", "--shutdown-grace", "1"],
                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PERDURE_DATABASE_URL": pg_url, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        workers.append(CliWorker(proc, log))
        return workers[-1]

    yield start
    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(timeout=10)
        print(f"--- {worker.log.name}\n{worker.log.read_text(errors='replace')}")


def wait_until(what: str, timeout: float, check: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


async def snapshot(url: str, run_ids: list[str]) -> Progress:
    """Each run, the worker ids of its attempts in order, and its event types."""
    engine = Engine(url)
    try:
        result: Progress = []
        for run_id in run_ids:
            run = await engine.get_run(run_id)
            events = await engine.events(run_id)
            starts = [e.data["worker_id"] for e in events if e.type == "attempt_started"]
            result.append((run, starts, [e.type for e in events]))
        return result
    finally:
        await engine.close()


async def trigger_all(url: str) -> list[str]:
    engine = Engine(url)  # triggers by task id: the workers registered "share" in the catalog
    try:
        return [(await engine.trigger("share", n)).id for n in range(RUNS)]
    finally:
        await engine.close()


def test_two_cli_workers_share_the_work_and_a_survivor_finishes_a_killed_ones_runs(
    pg_url: str, start_worker: StartWorker
) -> None:
    first, second = start_worker(), start_worker()
    wait_until("both workers to start", STARTUP, lambda: first.worker_id and second.worker_id)
    run_ids = asyncio.run(trigger_all(pg_url))

    def progress() -> Progress:
        return asyncio.run(snapshot(pg_url, run_ids))

    def completed_by(worker: CliWorker) -> int:
        return sum(
            1
            for run, starts, _ in progress()
            if run.status is RunStatus.COMPLETED and starts[-1] == worker.worker_id
        )

    # Mid-way: both have completed runs, and plenty are left.
    wait_until(
        "both workers to complete runs",
        20,
        lambda: completed_by(first) >= 2 and completed_by(second) >= 2,
    )
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    at_kill = progress()
    left = [run for run, _, _ in at_kill if run.status is not RunStatus.COMPLETED]
    assert len(left) >= 10, f"only {len(left)} runs were left at the kill"
    orphans = {
        run.id
        for run in left
        if run.status is RunStatus.RUNNING and run.lease_owner == first.worker_id
    }
    assert orphans, "the killed worker was running nothing"

    wait_until(
        "the survivor to finish every run",
        30 + LEASE,
        lambda: all(run.status is RunStatus.COMPLETED for run, _, _ in progress()),
    )
    final = progress()
    assert second.proc.poll() is None, "the surviving worker exited"

    assert sorted(run.output for run, _, _ in final) == sorted(n * n for n in range(RUNS))
    assert all(types.count("completed") == 1 for _, _, types in final)
    # Every run left at the kill was finished by the survivor; the killed worker's runs in
    # flight after their leases expired.
    left_ids = {run.id for run in left}
    for run, starts, types in final:
        if run.id in left_ids:
            assert starts[-1] == second.worker_id, (run.id, starts)
        if run.id in orphans:
            assert "lease_lost" in types, run.id
            assert starts[-2:] == [first.worker_id, second.worker_id], (run.id, starts)

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=20) == 0
