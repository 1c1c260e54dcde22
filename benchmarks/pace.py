"""The machine's pace when a benchmark ran: two fixed probes, so runs on different days (or
hours: a shared VM's speed drifts by 2-4x) can be told apart from changes in perdure.

    python benchmarks/pace.py

- `python_ms`: a fixed pure-Python workload (dicts, JSON encode and decode, the kind of work
  a worker does per run), best of 5. Lower is faster; CPU-bound figures scale with it.
- `fsync_ms`: the median time to write 4 KiB to a file and fsync it, 200 times, in the
  directory SQLite benchmarks use. Commit-bound figures scale with it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any


def python_ms() -> float:
    """Best of 5 of the reference workload, in milliseconds."""

    def work() -> int:
        total = 0
        for i in range(10_000):
            row = {"id": f"run_{i}", "status": "queued", "attempt": i % 3, "input": [i, i + 1]}
            total += len(json.loads(json.dumps(row))["input"])
        return total

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def fsync_ms(directory: str | None = None, count: int = 200) -> float:
    """Median milliseconds of a 4 KiB write + fsync in `directory` (the temp directory)."""
    block = os.urandom(4096)
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=directory, prefix="perdure-pace-") as tmp:
        fd = os.open(os.path.join(tmp, "probe"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for i in range(count):
                started = time.perf_counter()
                os.pwrite(fd, block, (i % 16) * 4096)
                os.fsync(fd)
                times.append(time.perf_counter() - started)
        finally:
            os.close(fd)
    return statistics.median(times) * 1000


def pace() -> dict[str, Any]:
    return {"python_ms": round(python_ms(), 1), "fsync_ms": round(fsync_ms(), 3)}


def describe(measured: dict[str, Any]) -> str:
    return (
        f"Python reference loop {measured['python_ms']:.1f} ms, "
        f"4 KiB write + fsync {measured['fsync_ms']:.2f} ms (lower is faster)"
    )


if __name__ == "__main__":
    print(describe(pace()))
