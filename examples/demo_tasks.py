"""Tasks for `examples/demo.py` (`make demo`).

The demo imports this module, and so do the worker processes it starts with
`python -m perdure worker examples.demo_tasks:engine`, so every process shares one engine
definition and one SQLite file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from perdure import Engine, RetryPolicy, RunContext

DATABASE_PATH = Path(__file__).resolve().parent.parent / ".perdure" / "demo.db"
DATABASE_URL = f"sqlite:///{DATABASE_PATH}"  # absolute, whatever each process's cwd

engine = Engine(DATABASE_URL)


class Report(BaseModel):
    name: str
    rows: int


class Summary(BaseModel):
    name: str
    checksum: int
    attempt: int


@engine.task(id="flaky-upload", retry=RetryPolicy(max_attempts=3, base_delay=0.1))
async def flaky_upload(ctx: RunContext, report: Report) -> str:
    """Fails on its first two attempts (a flaky network, say), then succeeds."""
    if ctx.attempt < 3:
        raise ConnectionError(f"upload of {report.name} dropped (attempt {ctx.attempt})")
    return f"uploaded {report.name} on attempt {ctx.attempt}"


@engine.task(id="slow-query", timeout=0.5)
async def slow_query(ctx: RunContext, report: Report) -> int:
    """Takes longer than its 0.5 s timeout."""
    await asyncio.sleep(5)
    return report.rows


@engine.task(id="long-export")
async def long_export(ctx: RunContext, report: Report) -> int:
    """Runs until cancelled (the demo cancels it while it runs)."""
    exported = 0
    while exported < report.rows:
        await asyncio.sleep(0.05)
        exported += 1
    return exported


@engine.task(id="crunch", queue="batch")
async def crunch(ctx: RunContext, report: Report) -> Summary:
    """A slow task for a worker process: the demo kills the first worker during it."""
    checksum = 0
    for row in range(report.rows):
        checksum = (checksum * 31 + row) % 1_000_003
        await asyncio.sleep(2.0 / report.rows)
    return Summary(name=report.name, checksum=checksum, attempt=ctx.attempt)
