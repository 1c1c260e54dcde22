"""Task-tree throughput: the `durable-execution` package's benchmark workload on perdure.

    python benchmarks/tree.py --backend sqlite memory postgres [--repeat 3]

For each backend, on a fresh database, with one in-process worker (`--concurrency` slots):
trigger together `--parents` (100) parents of `--children` (50) children each with a finalize
*task*, `--sequences` (100) four-step sequences and `--loops` (100) loops of
`--iterations` (3) iterations each, then wait until every run has finished.

An execution is one run that finished: a parent, a child, a finalize task, a sequence, a
sequence step, a loop or a loop iteration (defaults: 5,200 + 500 + 400 = 6,100). Executions/s
is executions ÷ the wall time from the first trigger to the last run finished. Attempts
counts every execution of a body, a parent's resumes included. The npm package reports
520-750 executions/s for this workload on 2 cores (in memory); perdure's goal is ≥ 7,500/s on
SQLite. CPU s is this process's CPU time over the same window; executions/CPU-s is what one
free core would sustain when the machine is busy with other work (for PostgreSQL it leaves
out the server's CPU). Benchmarks assert nothing; they report.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from drain import fresh_database
from rich.console import Console
from rich.table import Table

from perdure import (
    Engine,
    FinalizeInput,
    LoopResult,
    Parent,
    RunContext,
    RunHandle,
    RunStatus,
    Task,
    child,
)


@dataclass
class Row:
    backend: str
    executions: int
    attempts: int
    seconds: float
    cpu_seconds: float
    statuses: dict[str, int]

    @property
    def rate(self) -> float:
        return self.executions / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.executions / self.cpu_seconds


@dataclass(frozen=True)
class Workload:
    parents: int
    children: int
    sequences: int
    loops: int
    iterations: int

    @property
    def executions(self) -> int:
        return (
            self.parents * (self.children + 2)  # parent, children, finalize task
            + self.sequences * 5  # the sequence and its four steps
            + self.loops * (self.iterations + 1)  # the loop and its iterations
        )


def define(engine: Engine, workload: Workload) -> tuple[Task[int, Any], ...]:
    @engine.task(id="bench.child")
    async def child_task(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="bench.finalize")
    async def finalize(ctx: RunContext, data: FinalizeInput[int]) -> int:
        return (data.output or 0) + sum(c.output for c in data.children if c.ok)

    @engine.parent_task(id="bench.parent", finalize=finalize)
    def parent(ctx: RunContext, n: int) -> Parent[int]:
        return Parent(output=n, children=[child(child_task, i) for i in range(workload.children)])

    @engine.task(id="bench.step")
    async def step(ctx: RunContext, n: int) -> int:
        return n + 1

    sequence = engine.sequence("bench.sequence", [step, step, step, step])

    polls: Counter[int] = Counter()  # one in-process worker: a plain dict is enough

    @engine.task(id="bench.iteration")
    async def iteration(ctx: RunContext, n: int) -> LoopResult[int]:
        polls[n] += 1
        return LoopResult(done=polls[n] >= workload.iterations, output=n)

    loop = engine.loop("bench.loop", iteration, max_iterations=workload.iterations + 1)
    return parent, sequence, loop


async def measure(backend: str, url: str | None, workload: Workload, concurrency: int) -> Row:
    async with fresh_database(backend, url) as database:
        engine = Engine(database, concurrency=concurrency)
        parent, sequence, loop = define(engine, workload)
        storage = await engine.open()
        await engine.start()
        try:
            started, cpu_started = time.perf_counter(), cpu_time()
            batches = await asyncio.gather(
                parent.batch_trigger(list(range(workload.parents))),
                sequence.batch_trigger(list(range(workload.sequences))),
                loop.batch_trigger(list(range(workload.loops))),
            )
            handles: list[RunHandle[Any]] = [h for batch in batches for h in batch]
            # Every root at once: waiting one by one would add a read per finished root
            # after the last one. Roots finish last: every run below them has finished.
            await asyncio.gather(*(handle.wait(timeout=600) for handle in handles))
            elapsed, cpu = time.perf_counter() - started, cpu_time() - cpu_started
            statuses = await storage.count_by_status()
            attempts = await count_attempts(engine)
        finally:
            await engine.shutdown(grace=5)
    finished = sum(n for s, n in statuses.items() if RunStatus(s).is_terminal)
    return Row(backend, finished, attempts, elapsed, cpu, statuses)


def cpu_time() -> float:
    """CPU seconds of this process, all threads (the worker, and SQLite, run in it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def count_attempts(engine: Engine) -> int:
    total, cursor = 0, None
    while True:
        page = await engine.list_runs(limit=1000, cursor=cursor)
        total += sum(run.attempt for run in page.runs)
        if page.next_cursor is None:
            return total
        cursor = page.next_cursor


def render(rows: list[Row], workload: Workload, console: Console) -> None:
    table = Table(
        title=f"perdure task-tree benchmark ({workload.executions:,} executions expected)"
    )
    for name in (
        "backend",
        "executions",
        "attempts",
        "seconds",
        "executions/s",
        "CPU s",
        "executions/CPU-s",
    ):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for row in rows:
        table.add_row(
            row.backend,
            f"{row.executions:,}",
            f"{row.attempts:,}",
            f"{row.seconds:.2f}",
            f"{row.rate:,.0f}",
            f"{row.cpu_seconds:.2f}",
            f"{row.cpu_rate:,.0f}",
        )
    console.print(table)
    for row in rows:
        done = row.statuses.get(RunStatus.COMPLETED.value, 0)
        if done != workload.executions:
            console.print(f"[yellow]note[/]: {row.backend}: statuses {row.statuses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=("sqlite", "memory", "postgres"),
        default=["sqlite"],
        help="one row each, on a fresh database",
    )
    parser.add_argument("--url", default=None, help="PostgreSQL server (see drain.py)")
    parser.add_argument("--concurrency", type=int, default=100, help="worker slots")
    parser.add_argument("--parents", type=int, default=100)
    parser.add_argument("--children", type=int, default=50, help="children per parent")
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--loops", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=3, help="iterations per loop")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per backend, each on a fresh database; "
        "the table shows the run of median executions/s",
    )
    args = parser.parse_args()
    workload = Workload(args.parents, args.children, args.sequences, args.loops, args.iterations)
    console = Console(width=120)

    async def median_run(backend: str) -> Row:
        rows = [
            await measure(backend, args.url, workload, args.concurrency)
            for _ in range(max(1, args.repeat))
        ]
        if len(rows) > 1:
            rates = ", ".join(f"{row.rate:,.0f}" for row in rows)
            console.print(f"{backend}: executions/s of {len(rows)} runs: {rates}")
        return sorted(rows, key=lambda row: row.rate)[len(rows) // 2]

    async def run_all() -> list[Row]:
        return [await median_run(backend) for backend in args.backend]

    render(asyncio.run(run_all()), workload, console)


if __name__ == "__main__":
    main()
