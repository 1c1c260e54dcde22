"""Tasks and queues of the cross-process flow-control tests (`test_flow_processes.py`).

`build_engine(url)` is imported by the test process (to trigger and inspect) and by the
subprocesses (`flow_worker.py` runs a worker, `flow_trigger.py` triggers). Each execution of
`tracked` or `per_key` appends one line "<kind> <run id> <key> <start> <end> <pid>" to
`<marker dir>/executions.log`, with wall-clock times taken inside the task body: the interval
lies within the time the database says the run was running, so overlaps measured from it
never exceed the real ones.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from perdure import Engine, RateLimit, RetryPolicy, RunContext

MARKER_DIR_ENV = "PERDURE_TEST_MARKER_DIR"
#: Queue "limited": at most this many runs at once, across every process.
LIMIT = 4
#: Queue "rated": at most this many starts in any sliding one-second window.
RATE = RateLimit(50, per=1.0)
#: Queue "capped": at most this many waiting runs.
CAP = 100
#: How long `tracked` and `per_key` runs take.
WORK_SECONDS = 0.02
#: Slots per worker process: fewer than LIMIT, so reaching the limit takes two processes
#: running at once, and three processes (6 slots) could exceed it if it did not hold.
SLOTS = 2

#: The key every trigger of `charge` uses in the idempotency test.
IDEMPOTENCY_KEY = "order-42"

NO_RETRY = RetryPolicy(max_attempts=1)


def marker_dir() -> Path:
    return Path(os.environ[MARKER_DIR_ENV])


def record(kind: str, run_id: str, key: str, start: float, end: float) -> None:
    line = f"{kind} {run_id} {key} {start:.6f} {end:.6f} {os.getpid()}\n".encode()
    # One write in append mode: lines from several processes never interleave.
    fd = os.open(marker_dir() / "executions.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def build_engine(url: str, slots: int = SLOTS) -> Engine:
    engine = Engine(
        url, lease=10, heartbeat=1, poll_interval=0.05, shutdown_grace=1, concurrency=slots
    )
    engine.queue("limited", concurrency=LIMIT)
    engine.queue("keyed", key_concurrency=1)
    engine.queue("rated", rate_limit=RATE)
    engine.queue("capped", max_depth=CAP)

    @engine.task(id="tracked", queue="limited", retry=NO_RETRY)
    async def tracked(ctx: RunContext, n: int) -> int:
        start = time.time()
        await asyncio.sleep(WORK_SECONDS)
        record("tracked", ctx.run_id, "-", start, time.time())
        return n

    @engine.task(id="per_key", queue="keyed", retry=NO_RETRY)
    async def per_key(ctx: RunContext, key: str) -> str:
        start = time.time()
        await asyncio.sleep(WORK_SECONDS)
        record("per_key", ctx.run_id, key, start, time.time())
        return key

    @engine.task(id="rated", queue="rated", retry=NO_RETRY)
    async def rated(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="charge")
    async def charge(ctx: RunContext, cents: int) -> int:
        return cents

    @engine.task(id="capped", queue="capped")
    async def capped(ctx: RunContext, n: int) -> int:
        return n

    return engine
