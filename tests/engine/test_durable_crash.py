"""Acceptance: a task with steps a, b, c whose worker is SIGKILLed right after b committed.
After recovery by another worker process, a and b are not executed again and c completes
once. Side effects are counted in files, which survive the killed process.

c's counter counts *completions*: the killed worker had started c (its marker file says so)
but never finished it, and c's result was never committed, so the recovering worker runs c
again from the start; that second execution is the one that completes. A committed step is
never re-run; an uncommitted one is re-run (at-least-once for the step in flight).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

from perdure import RunStatus

from .apps.durable_app import LEASE, TASK_ID, build_engine, count
from .durable.support import recorded
from .support import wait_for_status, wait_until

WORKER_SCRIPT = Path(__file__).parent / "apps" / "durable_worker.py"
STARTUP = 15.0  # a fresh interpreter importing perdure, generously


@contextlib.contextmanager
def worker_process(url: str, counters: Path) -> Generator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, str(WORKER_SCRIPT), url, str(counters)])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def test_worker_killed_after_step_b_committed_resumes_without_rerunning_a_and_b(
    shared_url: str, tmp_path: Path
) -> None:
    counters = tmp_path / "counters"
    counters.mkdir()
    engine = build_engine(shared_url, counters)  # triggers and reads; runs no worker
    try:
        handle = await engine.trigger(TASK_ID)
        with worker_process(shared_url, counters) as first:
            await wait_until(
                lambda: (counters / "c.started").exists(),
                timeout=STARTUP,
                what="the first worker to start step c",
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = time.monotonic()
        assert first.returncode == -signal.SIGKILL
        events = await engine.events(handle.id)
        assert recorded(events) == [(0, "a", "completed"), (1, "b", "completed")]
        assert (count(counters, "a"), count(counters, "b"), count(counters, "c")) == (1, 1, 0)

        with worker_process(shared_url, counters):
            run = await wait_for_status(
                engine,
                handle.id,
                RunStatus.COMPLETED,
                RunStatus.FAILED,
                timeout=LEASE + 5 + STARTUP,
            )
            recovered_after = time.monotonic() - killed_at
        events = await engine.events(handle.id)
    finally:
        await engine.close()

    assert run.status is RunStatus.COMPLETED, run.error
    assert run.output == ["a", "b", "c"]
    assert (count(counters, "a"), count(counters, "b"), count(counters, "c")) == (1, 1, 1)
    assert run.attempt == 2
    assert run.lost_leases == 1
    assert recorded(events) == [(0, "a", "completed"), (1, "b", "completed"), (2, "c", "completed")]
    assert [e.type for e in events].count("lease_lost") == 1
    assert recovered_after < LEASE + 5, f"recovered {recovered_after:.1f}s after the kill"
