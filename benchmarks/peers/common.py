"""What every peer benchmark shares: the in-process recorder the no-op job bodies write to,
the worker-process protocol, and the driver's measurements.

Runs in the peers' own virtualenv (`make bench-peers`), never in perdure's: nothing here
imports perdure. Measurements are made the same way for every peer, so they compare:

- drain rate: jobs ÷ (last job body end - first job body start), over every worker process;
- enqueue→start latency: job body start - the wall-clock time taken just before the enqueue
  call (passed to the job as its argument);
- bulk enqueue rate: jobs ÷ wall time of the peer's batch enqueue calls.

Each job body calls `RECORDER.record(t0)`: no I/O, a lock and three floats. A daemon thread
writes the process's totals to a JSON file every 20 ms; the driver sums the files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_READY_TIMEOUT = 120.0


class Recorder:
    """Totals of the job bodies that ran in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.first_start = math.inf
        self.last_end = -math.inf
        self.latencies: list[float] = []

    def record(self, t0: float) -> None:
        start = time.time()
        with self.lock:
            self.count += 1
            if start < self.first_start:
                self.first_start = start
            if t0 > 0:
                self.latencies.append(start - t0)
            self.last_end = time.time()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "count": self.count,
                "first_start": self.first_start if self.count else None,
                "last_end": self.last_end if self.count else None,
                "latencies": list(self.latencies),
            }

    def publish_to(self, path: Path, interval: float = 0.02) -> None:
        """Write snapshots to `path` (atomically) from a daemon thread, until the process exits."""

        def loop() -> None:
            tmp = path.with_suffix(".tmp")
            while True:
                tmp.write_text(json.dumps(self.snapshot()))
                os.replace(tmp, path)
                time.sleep(interval)

        threading.Thread(target=loop, name="bench-recorder", daemon=True).start()


RECORDER = Recorder()


def wait_for_go() -> bool:
    """Tell the driver this worker is connected, then block until it says go (or hangs up)."""
    print("ready", flush=True)
    return bool(sys.stdin.readline())


# --- driver side ---------------------------------------------------------------------------------


@dataclass
class WorkerProcs:
    """Worker processes of one peer, each publishing its recorder to a stats file."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list[subprocess.Popen[str]])
    stats: list[Path] = field(default_factory=list[Path])

    def spawn(self, cmd: Sequence[str], stats: Path) -> None:
        proc = subprocess.Popen(
            [*cmd, "--stats", str(stats)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        self.stats.append(stats)
        assert proc.stdout is not None
        line = _readline(proc, WORKER_READY_TIMEOUT)
        if line.strip() != "ready":
            raise RuntimeError(f"peer worker exited ({proc.poll()}) before it was ready: {line!r}")

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def totals(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for path in self.stats:
            try:
                found.append(json.loads(path.read_text()))
            except (FileNotFoundError, json.JSONDecodeError):
                found.append({"count": 0, "first_start": None, "last_end": None, "latencies": []})
        return found

    def count(self) -> int:
        return sum(t["count"] for t in self.totals())

    def wait_count(self, expected: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            totals = self.totals()
            if sum(t["count"] for t in totals) >= expected:
                return totals
            if time.monotonic() > deadline:
                done = sum(t["count"] for t in totals)
                raise TimeoutError(f"{done} of {expected} jobs ran within {timeout:.0f} s")
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a peer worker exited with code {proc.returncode}")
            time.sleep(0.02)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the worker's stdout, or "" if none comes within `timeout` seconds."""
    result: list[str] = []
    stdout = proc.stdout
    assert stdout is not None
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else ""


def analyze(url: str) -> None:
    """ANALYZE the scratch database after a bulk load, as autovacuum soon would: without it
    the planner still sees the tables as empty as they were at schema creation."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def drain_rate(totals: Sequence[dict[str, Any]]) -> float:
    starts = [t["first_start"] for t in totals if t["count"]]
    ends = [t["last_end"] for t in totals if t["count"]]
    count = sum(t["count"] for t in totals)
    if not starts or max(ends) <= min(starts):
        return math.nan
    return count / (max(ends) - min(starts))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
