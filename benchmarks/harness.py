"""The benchmark harness: perdure's workloads on SQLite and PostgreSQL, and the Python peers
side by side on the same PostgreSQL and Redis.

    .venv/bin/python benchmarks/harness.py perdure            # make bench
    .venv/bin/python benchmarks/harness.py peers              # make bench-peers

`perdure` runs every workload of issue 7 on each backend and writes
`benchmarks/results/<date>-perdure.json`; `peers` runs perdure's shared workloads on
PostgreSQL and then each peer (in its own virtualenv, `benchmarks/.peers-venv`, through
`benchmarks/peers/run.py`) and writes `<date>-peers.json`. Both then render
`benchmarks/results/<date>.md` from whichever of the two files exist for that date, and print
the tables. Every PostgreSQL measurement gets a fresh `perdure_bench_*` database, dropped
afterwards; every workload has a time limit and is reported as `timeout` past it.
See benchmarks/README.md for what each figure measures. Benchmarks assert nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import steps as steps_bench
from bench_tasks import LATENCY_TASK_ID, make_engine
from drain import (
    DEFAULT_POSTGRES_URL,
    bulk_trigger,
    drain_rate,
    fresh_database,
    percentile,
    start_all,
    wait_all_finished,
    worker_processes,
)
from pace import describe as describe_pace
from pace import pace as measure_pace
from report import render_console, write_markdown

from perdure import Engine
from perdure.storage import make_storage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PEERS_PYTHON = HERE / ".peers-venv" / "bin" / "python"
PEERS_RUN = HERE / "peers" / "run.py"
TREE_SCRIPT = HERE / "tree.py"
CLAIM_BATCH = 64  # runs per claim, as the worker asks (perdure.engine.worker.CLAIM_BATCH)
CLAIM_SAMPLES = 20
CLAIM_SMALL = 10_000
CLAIM_LARGE = 1_000_000
CLAIM_TASK = "bench.claim"

Metrics = dict[str, Any]


def admin_url(args: argparse.Namespace) -> str:
    return args.url or os.environ.get("PERDURE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


async def limited(
    name: str, limit: float, work: Awaitable[Metrics], log: Callable[[str], None]
) -> Metrics:
    """Run one workload under a time limit; a failure or timeout becomes the figure itself."""
    log(f"  {name} …")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit):
            result = await work
    except TimeoutError:
        log(f"  {name}: timeout after {limit:.0f} s")
        return {"error": "timeout"}
    except Exception as exc:  # a benchmark reports; it does not stop the other workloads
        log(f"  {name}: error {exc!r}")
        return {"error": f"error: {type(exc).__name__}: {exc}"[:300]}
    log(f"  {name}: {_brief(result)} ({time.perf_counter() - started:.0f} s)")
    return result


def _brief(result: Metrics) -> str:
    return ", ".join(
        f"{k}={v:,.3g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.items()
        if not isinstance(v, dict | list)
    )


# --- perdure workloads -------------------------------------------------------------------------


async def perdure_drain(backend: str, args: argparse.Namespace, workers: int) -> Metrics:
    """(a) + (b): bulk trigger `--runs` no-op runs, then drain them with `workers` processes."""
    async with fresh_database(backend, args.url) as url:
        engine, _ = make_engine(url, concurrency=args.concurrency)
        storage = await engine.open()
        try:
            trigger_rate = await bulk_trigger(engine, args.runs, 1000)
            if backend == "postgres":  # as autovacuum soon would after a bulk load (and peers)
                await asyncio.to_thread(analyze_postgres, url)
            async with worker_processes(workers, url, args.concurrency, None) as procs:
                await start_all(procs)
                statuses = await wait_all_finished(storage, args.runs, args.limit)
            rate = await drain_rate(engine)
        finally:
            await engine.shutdown(grace=5)
    return {"bulk_rate": trigger_rate, "drain_rate": rate, "statuses": statuses}


async def trigger_latencies(engine: Engine, count: int, gap: float) -> list[float]:
    """Trigger `count` latency probes one at a time; each returns body start - trigger time."""
    task = engine.get_task(LATENCY_TASK_ID)
    handles = []
    for _ in range(count):
        handles.append(await task.trigger(time.time()))
        await asyncio.sleep(gap)
    return [await h.result(timeout=120) for h in handles]


async def perdure_latency(backend: str, args: argparse.Namespace, where: str) -> Metrics:
    """(c): enqueue→start latency of one-at-a-time runs picked up by an idle worker."""
    async with fresh_database(backend, args.url) as url:
        engine, _ = make_engine(url, concurrency=args.concurrency)
        await engine.open()
        try:
            if where == "in-process":
                await engine.start()
                await trigger_latencies(engine, 1, 0)  # warm-up, not measured
                await asyncio.sleep(1.0)
                values = await trigger_latencies(engine, args.latency_runs, args.latency_gap)
            else:
                async with worker_processes(1, url, args.concurrency, None) as procs:
                    await start_all(procs)
                    await trigger_latencies(engine, 1, 0)
                    await asyncio.sleep(1.0)  # idle
                    values = await trigger_latencies(engine, args.latency_runs, args.latency_gap)
        finally:
            await engine.shutdown(grace=5)
    return {
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "count": len(values),
    }


async def perdure_steps(backend: str, args: argparse.Namespace) -> Metrics:
    """(d): `benchmarks/steps.py`: one run of 200 steps alone (the cost of a step), then
    1,000 runs x 10 steps, 10 at a time (steps queue behind each other on one event loop)."""
    ns = argparse.Namespace(
        url=args.url, steps=200, runs=args.step_runs, steps_per_run=10, concurrency=10
    )
    rows = await steps_bench.bench(backend, ns)
    alone, row = rows[0], rows[-1]
    return {
        "alone_p50_ms": alone.p50_ms,
        "alone_p99_ms": alone.p99_ms,
        "p50_ms": row.p50_ms,
        "p99_ms": row.p99_ms,
        "mean_ms": row.mean_ms,
        "steps_per_s": row.steps_per_s,
        "cpu_ms": row.cpu_ms,
    }


async def perdure_tree(backend: str, args: argparse.Namespace) -> Metrics:
    """(e): `benchmarks/tree.py` (written separately); `pending` while it does not exist."""
    if not TREE_SCRIPT.exists():
        return {"error": "pending"}
    # The median of three runs: one run of this short workload varies by ±15% on a busy VM.
    cmd = [sys.executable, str(TREE_SCRIPT), "--backend", backend, "--repeat", "3"]
    if backend == "postgres" and args.url:
        cmd += ["--url", args.url]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    text = out.decode(errors="replace")
    rate = tree_rate(text)
    if proc.returncode != 0 or rate is None:
        return {"error": f"tree.py exit {proc.returncode}", "output": text[-2000:]}
    return {"executions_per_s": rate, "output": text[-2000:]}


def tree_rate(text: str) -> float | None:
    """The `executions/s` figure `tree.py` prints: a column of its table (rich box or
    markdown), or failing that a number followed by `executions/s`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in re.split(r"[┃│|]", line)]
        if "executions/s" not in cells:
            continue
        column = cells.index("executions/s")
        for row in lines[i + 1 :]:
            values = [c.strip() for c in re.split(r"[┃│|]", row)]
            if len(values) == len(cells) and re.fullmatch(r"[\d,.]+", values[column]):
                return float(values[column].replace(",", ""))
    found = re.findall(r"(\d[\d,]*(?:\.\d+)?)\s*executions/s", text)
    return float(found[-1].replace(",", "")) if found else None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# (f) claim cost: runs inserted set-based, straight into perdure's table (benchmark-only SQL).
_PG_INSERT = """
INSERT INTO perdure_runs (id, task_id, queue, status, priority, input, attempt, max_attempts,
    available_at, tags, metadata, root_id, event_seq, created_at, updated_at)
SELECT 'run_' || lpad(g::text, 26, '0'), %(task)s, 'default', 'queued', 0, '0', 0, 1,
    %(now)s + g * 1e-6, '[]', '{}', 'run_' || lpad(g::text, 26, '0'), 1, %(now)s, %(now)s
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
_SQLITE_INSERT = """
WITH RECURSIVE g(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM g WHERE n < :last)
INSERT INTO perdure_runs (id, task_id, queue, status, priority, input, attempt, max_attempts,
    available_at, tags, metadata, root_id, event_seq, created_at, updated_at)
SELECT printf('run_%026d', n), :task, 'default', 'queued', 0, '0', 0, 1,
    :now + n * 1e-6, '[]', '{}', printf('run_%026d', n), 1, :now, :now
FROM g
"""


def analyze_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def insert_queued(backend: str, url: str, first: int, last: int, now: float) -> None:
    params = {"task": CLAIM_TASK, "now": now, "first": first, "last": last}
    if backend == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_PG_INSERT, params)
        analyze_postgres(url)  # as autovacuum would after a bulk load
    else:
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path, timeout=60) as conn:
            conn.execute(_SQLITE_INSERT, params)
            conn.execute("ANALYZE")


async def perdure_claim(backend: str, args: argparse.Namespace) -> Metrics:
    """(f): median time of `Storage.claim_runs` (64 runs per claim) with 10k and with 1M runs
    queued in one queue."""
    async with fresh_database(backend, args.url) as url:
        storage = make_storage(url)
        await storage.open()
        try:
            timings: dict[str, float] = {}
            inserted = 0
            for label, size in (("10k", CLAIM_SMALL), ("1m", args.claim_large)):
                started = time.perf_counter()
                await asyncio.to_thread(
                    insert_queued, backend, url, inserted + 1, size, time.time() - 3600
                )
                inserted = size
                load = time.perf_counter() - started
                samples: list[float] = []
                for i in range(CLAIM_SAMPLES + 2):
                    started = time.perf_counter()
                    runs = await storage.claim_runs(
                        "bench-claim", ["default"], [CLAIM_TASK], CLAIM_BATCH, 300.0, time.time()
                    )
                    elapsed = time.perf_counter() - started
                    if len(runs) != CLAIM_BATCH:
                        raise RuntimeError(f"claimed {len(runs)} of {CLAIM_BATCH}")
                    if i >= 2:  # two warm-up claims
                        samples.append(elapsed)
                timings[label] = statistics.median(samples) * 1000
                timings[f"load_{label}_s"] = load
        finally:
            await storage.close()
    return {
        "claim_10k_ms": timings["10k"],
        "claim_1m_ms": timings["1m"],
        "ratio": timings["1m"] / timings["10k"],
        "queued_large": args.claim_large,
        "load_1m_s": timings["load_1m_s"],
    }


async def run_perdure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Metrics]:
    results: dict[str, Metrics] = {}
    for backend in args.backends:
        log(f"perdure on {backend}")
        row: Metrics = {}
        lim = args.limit
        for workers in (1, 2):
            row[f"drain{workers}"] = await limited(
                f"drain {workers} worker(s)",
                lim,
                perdure_drain(backend, args, workers),
                log,
            )
        row["latency"] = await limited(
            "latency (worker process)", lim, perdure_latency(backend, args, "process"), log
        )
        if backend == "sqlite":
            row["latency_inproc"] = await limited(
                "latency (in-process worker)",
                lim,
                perdure_latency(backend, args, "in-process"),
                log,
            )
        if not args.shared_only:
            row["steps"] = await limited("steps", lim, perdure_steps(backend, args), log)
            row["tree"] = await limited("tree", lim, perdure_tree(backend, args), log)
            row["claim"] = await limited("claim cost", lim * 2, perdure_claim(backend, args), log)
        elif backend == "postgres":
            row["steps"] = await limited("steps", lim, perdure_steps(backend, args), log)
        results[backend] = row
    return results


# --- peers -------------------------------------------------------------------------------------

PEER_CONFIGS: list[tuple[str, str, float | None]] = [
    # (label, peer, DBOS queue polling interval)
    ("DBOS (poll 1 s)", "dbos", None),
    ("DBOS (poll 0.01 s)", "dbos", 0.01),
    ("Procrastinate", "procrastinate", None),
    ("PgQueuer", "pgqueuer", None),
    ("Celery + Redis", "celery", None),
]


async def peer_call(
    argv: list[str], limit: float, database: str | None, args: argparse.Namespace
) -> Metrics:
    """Run `peers/run.py` with `argv` in the peers' venv, in its own process group, killed whole
    at `limit`; its last stdout line is the JSON result."""

    async def call(url: str) -> Metrics:
        cmd = [str(PEERS_PYTHON), str(PEERS_RUN), *argv, "--url", url]
        cmd += ["--redis-url", args.redis_url, "--deadline", str(limit)]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(limit):
                out, err = await proc.communicate()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return {"error": "timeout"}
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
        _kill_group(proc.pid)  # stray workers of a finished driver
        lines = out.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            return {"error": f"error (exit {proc.returncode}): {' | '.join(tail)}"[:400]}
        return json.loads(lines[-1])

    if database is None:
        return await call(admin_url(args))
    async with fresh_database("postgres", args.url) as url:
        return await call(url)


async def run_peers(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Metrics]:
    results: dict[str, Metrics] = {}
    for label, peer, poll in PEER_CONFIGS:
        if peer not in args.peers:
            continue
        log(label)
        extra = [] if poll is None else ["--poll-interval", str(poll)]
        row: Metrics = {}
        for workers in (1, 2):
            argv = ["drain", peer, "--runs", str(args.runs), "--workers", str(workers), *extra]
            row[f"drain{workers}"] = await limited(
                f"drain {workers} worker(s)",
                args.peer_limit + 30,
                peer_call(argv, args.peer_limit, "scratch", args),
                log,
            )
        argv = ["latency", peer, "--count", str(args.latency_runs), *extra]
        argv += ["--gap-ms", str(args.latency_gap * 1000)]
        row["latency"] = await limited(
            "latency",
            args.peer_limit + 30,
            peer_call(argv, args.peer_limit, "scratch", args),
            log,
        )
        if peer == "dbos":
            argv = ["steps", peer, "--runs", str(args.step_runs), "--concurrency", "10", *extra]
            row["steps"] = await limited(
                "steps",
                args.peer_limit + 30,
                peer_call(argv, args.peer_limit, "scratch", args),
                log,
            )
        results[label] = row
    return results


def peer_versions() -> dict[str, Any]:
    if not PEERS_PYTHON.exists():
        return {"error": f"{PEERS_PYTHON} missing: run `make bench-peers`"}
    out = subprocess.run(
        [str(PEERS_PYTHON), str(PEERS_RUN), "versions"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}


# --- environment -------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {_memory_gib()} GiB, {platform.platform()}",
        # 2 cores: anything else running (a test suite) shows here and skews every figure.
        "load average (1/5/15 min) at start": _load_average(),
        # A shared VM's speed drifts 2-4x from hour to hour: compare runs by this first.
        "machine pace at start": describe_pace(measure_pace()),
        "python": sys.version.split()[0],
        "perdure commit": _git("rev-parse", "--short", "HEAD")
        + (" (with uncommitted changes)" if _git("status", "--porcelain", "src") else ""),
    }
    try:
        import psycopg

        with psycopg.connect(admin_url(args)) as conn:
            settings = ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
            env["postgresql"] = {
                s: conn.execute(f"SHOW {s}").fetchone()[0]  # type: ignore[index]
                for s in (*settings, "full_page_writes", "max_connections", "shared_buffers")
            }
    except Exception as exc:
        env["postgresql"] = f"unreachable: {exc}"
    env["sqlite"] = _sqlite_settings()
    try:
        import redis

        client = redis.Redis.from_url(args.redis_url)
        info = client.info("server")
        persistence = client.config_get("appendonly") | client.config_get("save")
        env["redis"] = {"version": info["redis_version"], **persistence}
    except Exception as exc:
        env["redis"] = f"unreachable: {exc}"
    return env


def _sqlite_settings() -> dict[str, Any]:
    """The pragmas of a connection as perdure opens it."""
    import tempfile

    async def probe() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            storage = make_storage(f"sqlite:///{tmp}/probe.db")
            await storage.open()
            conn = storage.db._connection()  # type: ignore[attr-defined]  # benchmark-only peek
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            found = {
                "version": sqlite3.sqlite_version,
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": names[conn.execute("PRAGMA synchronous").fetchone()[0]],
            }
            await storage.close()
            return found

    return asyncio.run(probe())


def _load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _memory_gib() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 2**30)
    except (ValueError, OSError):
        return 0


def _git(*argv: str) -> str:
    out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("suite", choices=("perdure", "peers", "render"))
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--peers", nargs="+", default=["dbos", "procrastinate", "pgqueuer", "celery"]
    )
    parser.add_argument("--runs", type=int, default=20_000, help="runs to pre-queue and drain")
    parser.add_argument("--concurrency", type=int, default=100, help="perdure slots per worker")
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--latency-gap-ms", type=float, default=5.0)
    parser.add_argument("--step-runs", type=int, default=1000, help="10-step runs")
    parser.add_argument("--claim-large", type=int, default=CLAIM_LARGE)
    parser.add_argument("--limit", type=float, default=240.0, help="seconds per perdure workload")
    parser.add_argument("--peer-limit", type=float, default=300.0, help="seconds per peer workload")
    parser.add_argument("--url", default=None, help="PostgreSQL server (admin) URL")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("PERDURE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="Redis database for Celery's broker (flushed before and after each workload)",
    )
    parser.add_argument("--date", default=dt.date.today().isoformat(), help="results file name")
    args = parser.parse_args(argv)
    args.latency_gap = args.latency_gap_ms / 1000
    args.shared_only = args.suite == "peers"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwind: drop scratch databases
    RESULTS.mkdir(exist_ok=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.suite != "render":
        started = time.perf_counter()
        document: dict[str, Any] = {"environment": environment(args)}
        if args.suite == "perdure":
            document["perdure"] = asyncio.run(run_perdure(args, log))
        else:
            args.backends = ["postgres"]
            document["environment"]["peers"] = peer_versions()
            document["perdure"] = asyncio.run(run_perdure(args, log))
            document["peers"] = asyncio.run(run_peers(args, log))
        document["settings"] = {
            "runs": args.runs,
            "perdure concurrency": args.concurrency,
            "latency runs": args.latency_runs,
            "latency gap ms": args.latency_gap_ms,
            "10-step runs": args.step_runs,
            "claim sizes": [CLAIM_SMALL, args.claim_large],
            "time limit s": args.peer_limit if args.suite == "peers" else args.limit,
            "redis": args.redis_url,
        }
        document["wall_s"] = time.perf_counter() - started
        document["environment"]["load average (1/5/15 min) at end"] = _load_average()
        document["environment"]["machine pace at end"] = describe_pace(measure_pace())
        path = RESULTS / f"{args.date}-{args.suite}.json"
        path.write_text(json.dumps(document, indent=1, default=_json_default) + "\n")
        log(f"wrote {path.relative_to(ROOT)}")
    markdown = write_markdown(RESULTS, args.date)
    log(f"wrote {markdown.relative_to(ROOT)}")
    render_console(RESULTS, args.date)


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
