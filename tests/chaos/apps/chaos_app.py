"""The task of the chaos test (tests/chaos/test_chaos.py), built on perdure's public API only.

`three_steps` makes three recorded steps. Each step function appends a row to the side table
`chaos_executions` (run id, step name, attempt, pid) in its own autocommit INSERT, before it
returns: the table counts every execution of a step function, including those whose result
was never recorded because the worker died (or the database went away) first.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from psycopg_pool import AsyncConnectionPool

from perdure import Engine, RetryPolicy, RunContext

LEASE = 2.0
HEARTBEAT = 0.5
TASK_ID = "chaos-three-steps"
STEPS = ("a", "b", "c")
CONCURRENCY = 24
#: Crashes and a database restart cost attempts and leases; neither may fail a run here.
MAX_LOST_LEASES = 50
RETRY = RetryPolicy(max_attempts=50, base_delay=0.05, multiplier=2.0, max_delay=0.5)

CREATE_SIDE_TABLE = """
CREATE TABLE IF NOT EXISTS chaos_executions (
    run_id  TEXT NOT NULL,
    step    TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid     INTEGER NOT NULL,
    at      DOUBLE PRECISION NOT NULL
)
"""
INSERT_EXECUTION = (
    "INSERT INTO chaos_executions (run_id, step, attempt, pid, at) VALUES (%s, %s, %s, %s, %s)"
)


def side_pool(url: str) -> AsyncConnectionPool:
    """Connections for the side table (opened by the caller, inside its event loop)."""
    return AsyncConnectionPool(
        url, min_size=1, max_size=4, open=False, timeout=5, kwargs={"autocommit": True}
    )


def chaos_engine(url: str, concurrency: int = CONCURRENCY) -> Engine:
    """An engine with the chaos tests' short lease and fast polling, and no tasks yet."""
    return Engine(
        url,
        lease=LEASE,
        heartbeat=HEARTBEAT,
        poll_interval=0.25,
        shutdown_grace=1,
        concurrency=concurrency,
        max_lost_leases=MAX_LOST_LEASES,
    )


def build_engine(url: str, executions: AsyncConnectionPool | None = None) -> Engine:
    """The engine with the chaos task; `executions` is needed only where it runs."""
    engine = chaos_engine(url)

    async def execute(run_id: str, attempt: int, step: str) -> str:
        assert executions is not None, "this engine only triggers; it runs no steps"
        async with executions.connection() as conn:
            await conn.execute(INSERT_EXECUTION, (run_id, step, attempt, os.getpid(), time.time()))
        # Some work, so kills land mid-step; it also makes a run last ~0.45 s, so the drain lasts
        # long enough for the test's kills and restart however fast the machine is.
        await asyncio.sleep(random.uniform(0.1, 0.2))
        return f"{step}@{attempt}"

    @engine.task(id=TASK_ID, retry=RETRY)
    async def three_steps(ctx: RunContext, n: int) -> list[str]:
        return [await ctx.step(step, execute, ctx.run_id, ctx.attempt, step) for step in STEPS]

    return engine
