"""Many runs suspended on wait tokens: worker memory while they wait, and time to finish them.

    python benchmarks/tokens.py --backend sqlite memory --runs 10000

For each backend, on a fresh database, with one in-process worker (`--concurrency` 100):

1. Trigger `--runs` (10,000) runs, 1,000 at a time (one batch_trigger call each, then wait
   until they are `suspended`); each creates a token and waits on it, so it suspends.
2. Complete every token with `engine.complete_token` (`--parallel` (50) calls in flight), and
   wait until every run has `completed`.

RSS is this process's resident set (`VmRSS` from /proc/self/status, after `gc.collect()`),
read when the worker has started and before any run exists, once the first 1,000 runs are
suspended (everything warmed up), once all are, and once all have completed. A suspended run
holds no slot, task or context in the worker, so RSS should not grow with the number of
waiting runs. What does grow: this benchmark's own map of run id → token id (~200 bytes a
run), SQLite's page cache (bounded, 2 MB by default) and, for `memory`, the database itself,
which lives in this process. Benchmarks assert nothing; they report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from dataclasses import dataclass
from pathlib import Path

from drain import fresh_database
from rich.console import Console
from rich.table import Table

from perdure import Engine, RunContext, RunStatus

TASK_ID = "bench.token-wait"
CHUNK = 1000


@dataclass
class Row:
    backend: str
    runs: int
    rss_idle_mb: float
    rss_first_chunk_mb: float
    rss_suspended_mb: float
    rss_done_mb: float
    suspend_s: float
    complete_calls_per_s: float
    finish_all_s: float
    active_attempts: int


def rss_mb() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(url: str, concurrency: int, tokens: dict[str, str]) -> Engine:
    engine = Engine(url, concurrency=concurrency, poll_interval=0.05)

    @engine.task(id=TASK_ID)
    async def wait(ctx: RunContext, n: int) -> int:
        token = await ctx.create_token()
        tokens[ctx.run_id] = token.id  # same id on the replay that resumes the run
        answer = await ctx.wait_for_token(token, int)
        return n + answer

    return engine


async def count(engine: Engine, status: RunStatus) -> int:
    storage = await engine.open()
    return (await storage.count_by_status()).get(status.value, 0)


async def wait_for(engine: Engine, status: RunStatus, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await count(engine, status) < n:
        if time.monotonic() > deadline:
            counts = await (await engine.open()).count_by_status()
            raise TimeoutError(f"not {n} runs {status.value} after {timeout}s: {counts}")
        await asyncio.sleep(0.05)


async def bench(backend: str, args: argparse.Namespace) -> Row:
    async with fresh_database(backend, args.url) as url:
        tokens: dict[str, str] = {}
        engine = build(url, args.concurrency, tokens)
        async with engine:
            task = engine.get_task(TASK_ID)
            rss_idle = rss_mb()

            rss_first_chunk = rss_idle
            started = time.perf_counter()
            for first in range(0, args.runs, CHUNK):
                last = min(first + CHUNK, args.runs)
                await task.batch_trigger(list(range(first, last)))
                await wait_for(engine, RunStatus.SUSPENDED, last, args.timeout)
                if first == 0:
                    rss_first_chunk = rss_mb()
            suspend_s = time.perf_counter() - started
            worker = engine._worker  # pyright: ignore[reportPrivateUsage]
            active = len(worker.active) if worker is not None else -1
            rss_suspended = rss_mb()

            pending = list(tokens.values())
            started = time.perf_counter()
            limit = asyncio.Semaphore(args.parallel)

            async def complete(token_id: str) -> None:
                async with limit:
                    await engine.complete_token(token_id, 1)

            await asyncio.gather(*(complete(t) for t in pending))
            calls_s = time.perf_counter() - started
            await wait_for(engine, RunStatus.COMPLETED, args.runs, args.timeout)
            finish_s = time.perf_counter() - started
            rss_done = rss_mb()
    return Row(
        backend=backend,
        runs=args.runs,
        rss_idle_mb=rss_idle,
        rss_first_chunk_mb=rss_first_chunk,
        rss_suspended_mb=rss_suspended,
        rss_done_mb=rss_done,
        suspend_s=suspend_s,
        complete_calls_per_s=len(pending) / calls_s,
        finish_all_s=finish_s,
        active_attempts=active,
    )


def show(rows: list[Row]) -> None:
    table = Table(title="runs suspended on wait tokens")
    columns = (
        "backend", "runs", "RSS idle MB", f"RSS {CHUNK:,} suspended MB", "RSS all suspended MB",
        f"growth {CHUNK:,}→all, bytes/run", "RSS all done MB", "trigger→all suspended s",
        "complete_token calls/s", "complete→all done s", "attempts held while suspended",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "backend" else "right")
    for r in rows:
        per_run = (r.rss_suspended_mb - r.rss_first_chunk_mb) * 2**20 / max(1, r.runs - CHUNK)
        table.add_row(
            r.backend, f"{r.runs:,}", f"{r.rss_idle_mb:.1f}", f"{r.rss_first_chunk_mb:.1f}",
            f"{r.rss_suspended_mb:.1f}", f"{per_run:,.0f}", f"{r.rss_done_mb:.1f}",
            f"{r.suspend_s:.2f}", f"{r.complete_calls_per_s:,.0f}", f"{r.finish_all_s:.2f}",
            str(r.active_attempts),
        )  # fmt: skip
    Console(width=200).print(table)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend", nargs="+", default=["sqlite"], choices=["sqlite", "memory", "postgres"]
    )
    parser.add_argument("--url", default=None, help="PostgreSQL server URL (admin)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    rows = [await bench(backend, args) for backend in args.backend]
    show(rows)


if __name__ == "__main__":
    asyncio.run(main())
