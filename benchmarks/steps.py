"""Per-step overhead of durable steps (`ctx.step`).

    python benchmarks/steps.py --backend sqlite memory postgres

For each backend, on a fresh database, with one in-process worker:

1. one run of `--steps` (1,000) no-op steps;
2. `--runs` (1,000) runs of `--steps-per-run` (10) no-op steps each, `--concurrency` (10) at
   a time.

Each `await ctx.step(...)` is timed in the task body with `time.perf_counter()`: the cost of
one step is the whole durable call (name check, replay lookup, the fenced write that records
the result and its event: on PostgreSQL one statement, group-committed with the records other
runs write at the same moment). The step function itself does nothing. Scenario 2 also
reports steps/s: all steps ÷ the wall time from the first trigger to the last run finished.
CPU ms/step is this process's CPU time (all threads) per step over the scenario, run
overhead included: when it is close to 1000 ÷ steps/s, the single event loop is the limit.
Benchmarks assert nothing; they report. Goal (issue 4): p50 ≤ 0.3 ms on SQLite, ≤ 1 ms on
PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import statistics
import time
from dataclasses import dataclass

from drain import fresh_database
from rich.console import Console
from rich.table import Table

from perdure import Engine, RunContext, RunHandle, RunStatus


@dataclass
class Row:
    backend: str
    scenario: str
    steps: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    steps_per_s: float
    cpu_ms: float


def noop() -> None:
    return None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def build(url: str, concurrency: int, timings: list[float]) -> Engine:
    engine = Engine(url, concurrency=concurrency, poll_interval=0.05)

    @engine.task(id="bench.steps")
    async def steps(ctx: RunContext, n: int) -> int:
        for i in range(n):
            started = time.perf_counter()
            await ctx.step(f"s{i}", noop)
            timings.append(time.perf_counter() - started)
        return n

    return engine


def cpu_time() -> float:
    """CPU seconds used by this process so far (every thread: the loop, heartbeats, drivers)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def row(backend: str, scenario: str, timings: list[float], wall: float, cpu: float) -> Row:
    return Row(
        backend=backend,
        scenario=scenario,
        steps=len(timings),
        p50_ms=percentile(timings, 50) * 1000,
        p99_ms=percentile(timings, 99) * 1000,
        mean_ms=statistics.fmean(timings) * 1000,
        steps_per_s=len(timings) / wall,
        cpu_ms=cpu / len(timings) * 1000,
    )


async def bench(backend: str, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    async with fresh_database(backend, args.url) as url:
        timings: list[float] = []
        engine = build(url, args.concurrency, timings)
        async with engine:
            task = engine.get_task("bench.steps")
            # Warm up (connection, caches, prepared statements), not measured.
            await (await task.trigger(10)).result(timeout=60)
            timings.clear()

            started, cpu = time.perf_counter(), cpu_time()
            run = await (await task.trigger(args.steps)).wait(timeout=600)
            wall, cpu = time.perf_counter() - started, cpu_time() - cpu
            assert run.status is RunStatus.COMPLETED, run.error
            rows.append(row(backend, f"1 run x {args.steps} steps", timings, wall, cpu))

            timings.clear()
            started, cpu = time.perf_counter(), cpu_time()
            handles: list[RunHandle[int]] = []
            for first in range(0, args.runs, 1000):
                chunk = min(1000, args.runs - first)
                handles += await task.batch_trigger([args.steps_per_run] * chunk)
            for handle in handles:
                run = await handle.wait(timeout=600)
                assert run.status is RunStatus.COMPLETED, run.error
            wall, cpu = time.perf_counter() - started, cpu_time() - cpu
            scenario = f"{args.runs} runs x {args.steps_per_run} steps (c={args.concurrency})"
            rows.append(row(backend, scenario, timings, wall, cpu))
    return rows


def show(rows: list[Row]) -> None:
    table = Table(title="durable step overhead (time of one `await ctx.step(name, noop)`)")
    columns = (
        "backend",
        "scenario",
        "steps",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "steps/s",
        "CPU ms/step",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("backend", "scenario") else "right")
    for r in rows:
        table.add_row(
            r.backend,
            r.scenario,
            f"{r.steps:,}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            f"{r.mean_ms:.3f}",
            f"{r.steps_per_s:,.0f}",
            f"{r.cpu_ms:.3f}",
        )
    Console(width=120).print(table)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", nargs="+", default=["sqlite"], choices=["sqlite", "memory", "postgres"]
    )
    parser.add_argument("--url", default=None, help="PostgreSQL server URL (admin)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps-per-run", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    rows: list[Row] = []
    for backend in args.backend:
        rows += await bench(backend, args)
    show(rows)


if __name__ == "__main__":
    asyncio.run(main())
