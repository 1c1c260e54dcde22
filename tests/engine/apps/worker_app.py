"""Tasks run by worker subprocesses in the cross-process tests (crash recovery, cancel).

`build_engine(url)` is imported both by the test process (to trigger and inspect) and by
`run_worker.py` in the child process (to run the worker). Each execution start is appended to
`<marker dir>/<run id>.starts` as a line "<attempt> <pid>", so the test can see what ran where
even after the process was SIGKILLed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from perdure import Engine, RunContext

LEASE = 2.0
HEARTBEAT = 0.5
MARKER_DIR_ENV = "PERDURE_TEST_MARKER_DIR"


def marker_dir() -> Path:
    return Path(os.environ[MARKER_DIR_ENV])


def record_start(ctx: RunContext) -> None:
    with (marker_dir() / f"{ctx.run_id}.starts").open("a") as f:
        f.write(f"{ctx.attempt} {os.getpid()}\n")


def write_marker(name: str, text: str) -> None:
    """Write a file atomically, so a test polling for it never reads it half-written."""
    tmp = marker_dir() / f".{name}.tmp"
    tmp.write_text(text)
    tmp.replace(marker_dir() / name)


def build_engine(url: str, **options: Any) -> Engine:
    """The engine both sides build; `options` override the short test timings."""
    timings: dict[str, Any] = {
        "lease": LEASE,
        "heartbeat": HEARTBEAT,
        "poll_interval": 0.1,
        "shutdown_grace": 1,
    }
    engine = Engine(url, **{**timings, **options})

    @engine.task(id="crashy")
    async def crashy(ctx: RunContext, label: str) -> str:
        """Records its start; the first attempt then hangs until its process is killed."""
        record_start(ctx)
        if ctx.attempt == 1:
            await asyncio.sleep(60)
        return f"{label} done by pid {os.getpid()} on attempt {ctx.attempt}"

    @engine.task(id="quick")
    async def quick(ctx: RunContext, label: str) -> str:
        record_start(ctx)
        return f"{label} done"

    @engine.task(id="cancellable")
    async def cancellable(ctx: RunContext) -> str:
        """Runs until stopped, then records whether it saw `ctx.cancelled` and how it left."""
        record_start(ctx)
        how = "returned"
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            how = "CancelledError"
            raise
        finally:
            write_marker(f"{ctx.run_id}.stopped", f"{how} ctx.cancelled={ctx.cancelled.is_set()}")
        return "not cancelled?"

    return engine
