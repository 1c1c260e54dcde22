"""Drain throughput, bulk trigger rate and enqueue-to-start latency of no-op runs.

    python benchmarks/drain.py --backend sqlite --runs 20000 --workers 1 2

For each worker count, on a fresh database: pre-queue `--runs` no-op runs with `batch_trigger`
in chunks (bulk trigger rate), start that many worker processes at once and wait until every
run has finished (drain rate, from the runs' stored `started_at`/`finished_at`), then with one
idle worker trigger runs one at a time and read each run's `started_at - created_at`.
Everything is measured from timestamps in the database, not from in-process counters.
Benchmarks assert nothing; they report. See benchmarks/README.md for the columns.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString
from urllib.parse import urlsplit, urlunsplit

from bench_tasks import NOOP_TASK_ID, make_engine
from rich.console import Console
from rich.table import Table

from perdure import Engine, RunHandle, RunStatus
from perdure.storage import Storage

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
WORKER_SCRIPT = Path(__file__).with_name("bench_worker.py")
WORKER_START_TIMEOUT = 60.0


@dataclass
class Result:
    backend: str
    runs: int
    workers: int
    trigger_rate: float
    drain_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_worker: str
    statuses: dict[str, int] = field(default_factory=dict[str, int])


# --- databases ---------------------------------------------------------------------------------


@asynccontextmanager
async def fresh_database(backend: str, url: str | None) -> AsyncGenerator[str]:
    """A URL for an empty database of `backend`, removed afterwards."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="perdure-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"  # tmp is absolute: sqlite:////tmp/…/bench.db
    else:
        admin_url = url or os.environ.get("PERDURE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        name = f"perdure_bench_{secrets.token_hex(4)}"
        await asyncio.to_thread(_postgres_admin, admin_url, "CREATE DATABASE {}", name)
        try:
            yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
        finally:
            await asyncio.to_thread(
                _postgres_admin, admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name
            )


def _postgres_admin(admin_url: str, template: LiteralString, database: str) -> None:
    import psycopg  # only needed for the postgres backend (perdure[postgres])
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL(template).format(sql.Identifier(database)))


# --- worker processes --------------------------------------------------------------------------


class WorkerProcess:
    """One `bench_worker.py` process: connected on `spawn`, claiming after `go`."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, url: str, concurrency: int, poll_interval: float | None) -> WorkerProcess:
        cmd = [sys.executable, str(WORKER_SCRIPT), "--url", url, "--concurrency", str(concurrency)]
        if poll_interval is not None:
            cmd += ["--poll-interval", str(poll_interval)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        worker = cls(proc)
        await worker._expect("ready")
        return worker

    async def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(WORKER_START_TIMEOUT):
            line = await self.proc.stdout.readline()
        if line.decode().strip() != word:
            code = await self.proc.wait()
            raise RuntimeError(f"benchmark worker exited with code {code} before {word!r}")

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def started(self) -> None:
        await self._expect("started")

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            async with asyncio.timeout(30):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def worker_processes(
    count: int, url: str, concurrency: int, poll_interval: float | None
) -> AsyncGenerator[list[WorkerProcess]]:
    """`count` connected workers; they all start claiming at once when the body calls `go`."""
    workers: list[WorkerProcess] = []
    try:
        for _ in range(count):
            workers.append(await WorkerProcess.spawn(url, concurrency, poll_interval))
        yield workers
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


async def start_all(workers: Sequence[WorkerProcess]) -> None:
    await asyncio.gather(*(w.go() for w in workers))
    await asyncio.gather(*(w.started() for w in workers))


# --- measurements ------------------------------------------------------------------------------


async def bulk_trigger(engine: Engine, runs: int, chunk: int) -> float:
    """Queue `runs` no-op runs with `batch_trigger` in chunks; returns runs per second."""
    task = engine.get_task(NOOP_TASK_ID)
    started = time.perf_counter()
    for first in range(0, runs, chunk):
        await task.batch_trigger(list(range(first, min(first + chunk, runs))))
    return runs / (time.perf_counter() - started)


async def wait_all_finished(storage: Storage, runs: int, timeout: float) -> dict[str, int]:
    """Poll the database until `runs` runs are in a terminal status; returns status counts."""
    async with asyncio.timeout(timeout):
        while True:
            counts = await storage.count_by_status()
            if sum(n for s, n in counts.items() if RunStatus(s).is_terminal) >= runs:
                return counts
            await asyncio.sleep(0.1)


async def drain_rate(engine: Engine) -> float:
    """Runs per second from the first `started_at` to the last `finished_at`, paging through
    every run of the benchmark task."""
    first_start, last_finish, count = math.inf, -math.inf, 0
    cursor: str | None = None
    while True:
        page = await engine.list_runs(task_id=NOOP_TASK_ID, limit=1000, cursor=cursor)
        for run in page.runs:
            if run.started_at is not None and run.finished_at is not None:
                first_start = min(first_start, run.started_at.timestamp())
                last_finish = max(last_finish, run.finished_at.timestamp())
                count += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    if count == 0 or last_finish <= first_start:
        return math.nan
    return count / (last_finish - first_start)


async def trigger_one_by_one(engine: Engine, count: int, gap: float) -> list[float]:
    """Trigger `count` runs one at a time, `gap` seconds apart, wait for them, and return
    each run's `started_at - created_at` in seconds."""
    task = engine.get_task(NOOP_TASK_ID)
    handles: list[RunHandle[None]] = []
    for i in range(count):
        handles.append(await task.trigger(i))
        await asyncio.sleep(gap)
    for handle in handles:
        await handle.wait(timeout=60)
    storage = await engine.open()
    latencies: list[float] = []
    ids = [h.id for h in handles]
    for first in range(0, len(ids), 500):
        for run in await storage.get_runs(ids[first : first + 500]):
            if run.started_at is not None:
                latencies.append((run.started_at - run.created_at).total_seconds())
    return latencies


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# --- one row of the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    backend: str
    url: str | None
    runs: int
    concurrency: int
    chunk: int
    latency_runs: int
    latency_gap: float
    latency_worker: str
    poll_interval: float | None


async def measure(settings: Settings, workers: int) -> Result:
    s = settings
    async with fresh_database(s.backend, s.url) as url:
        engine, _ = make_engine(url, concurrency=s.concurrency, poll_interval=s.poll_interval)
        storage = await engine.open()
        try:
            trigger_rate = await bulk_trigger(engine, s.runs, s.chunk)
            drain_timeout = max(300.0, s.runs / 20)
            if s.backend == "memory":
                await engine.start()
                statuses = await wait_all_finished(storage, s.runs, drain_timeout)
            else:
                async with worker_processes(workers, url, s.concurrency, s.poll_interval) as procs:
                    await start_all(procs)
                    statuses = await wait_all_finished(storage, s.runs, drain_timeout)
            rate = await drain_rate(engine)

            if s.latency_worker == "in-process":
                await engine.start()  # no-op if it already runs
                await asyncio.sleep(0.5)  # let it go idle
                latencies = await trigger_one_by_one(engine, s.latency_runs, s.latency_gap)
            else:
                async with worker_processes(1, url, s.concurrency, s.poll_interval) as procs:
                    await start_all(procs)
                    await asyncio.sleep(0.5)  # let it go idle
                    latencies = await trigger_one_by_one(engine, s.latency_runs, s.latency_gap)
        finally:
            await engine.shutdown(grace=5)
    return Result(
        backend=s.backend,
        runs=s.runs,
        workers=workers,
        trigger_rate=trigger_rate,
        drain_rate=rate,
        latency_p50_ms=percentile(latencies, 50) * 1000,
        latency_p99_ms=percentile(latencies, 99) * 1000,
        latency_worker=s.latency_worker,
        statuses=statuses,
    )


def render(results: Sequence[Result], console: Console) -> None:
    table = Table(title="perdure drain benchmark (no-op runs)")
    for name in (
        "backend",
        "runs",
        "workers",
        "drain runs/s",
        "bulk trigger runs/s",
        "latency p50 ms",
        "latency p99 ms",
        "latency worker",
    ):
        table.add_column(name, justify="left" if name in ("backend", "latency worker") else "right")
    for r in results:
        table.add_row(
            r.backend,
            f"{r.runs:,}",
            str(r.workers),
            f"{r.drain_rate:,.0f}",
            f"{r.trigger_rate:,.0f}",
            f"{r.latency_p50_ms:.1f}",
            f"{r.latency_p99_ms:.1f}",
            r.latency_worker,
        )
    console.print(table)
    for r in results:
        done = r.statuses.get(RunStatus.COMPLETED.value, 0)
        if done != r.runs:
            console.print(
                f"[yellow]note[/]: {r.backend} with {r.workers} worker(s): "
                f"statuses {r.statuses} ({done} of {r.runs} completed)"
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure drain throughput, bulk trigger rate and enqueue-to-start latency."
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres", "memory"), default="sqlite")
    parser.add_argument("--runs", type=int, default=20_000, help="runs to pre-queue and drain")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="worker processes; several values give one row each",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="slots per worker")
    parser.add_argument(
        "--url",
        default=None,
        help="PostgreSQL server to create the benchmark database on (default "
        f"$PERDURE_TEST_POSTGRES_URL or {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--chunk", type=int, default=1000, help="runs per batch_trigger")
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument(
        "--latency-gap-ms", type=float, default=5.0, help="pause between two single triggers"
    )
    parser.add_argument(
        "--latency-worker",
        choices=("process", "in-process"),
        default="process",
        help="where the idle worker of the latency test runs (memory: always in-process)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        help="engine poll_interval for every engine (default: the engine's)",
    )
    args = parser.parse_args(argv)
    if args.backend == "memory":
        if any(w != 1 for w in args.workers):
            parser.error(
                "memory:// is private to one connection: only --workers 1 (an "
                "in-process worker) is possible"
            )
        args.latency_worker = "in-process"
    if args.url is not None and args.backend != "postgres":
        parser.error("--url is for --backend postgres")
    if args.runs < 1 or args.chunk < 1 or any(w < 1 for w in args.workers):
        parser.error("--runs, --chunk and --workers must be >= 1")
    return args


async def run(args: argparse.Namespace) -> list[Result]:
    settings = Settings(
        backend=args.backend,
        url=args.url,
        runs=args.runs,
        concurrency=args.concurrency,
        chunk=args.chunk,
        latency_runs=args.latency_runs,
        latency_gap=args.latency_gap_ms / 1000,
        latency_worker=args.latency_worker,
        poll_interval=args.poll_interval,
    )
    return [await measure(settings, workers) for workers in args.workers]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so a PostgreSQL database is dropped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Piped output: a fixed width keeps the table on one line per row.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    results = asyncio.run(run(args))
    render(results, console)


if __name__ == "__main__":
    main()
