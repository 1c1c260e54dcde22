"""The durable task of the SIGKILL acceptance test (tests/engine/test_durable_crash.py).

`build_engine(url, counters)` is imported by the test process (to trigger and inspect) and by
`durable_worker.py` in the worker processes. Each step appends a line to `<counters>/<name>`
when it completes, so the files count completed executions even across SIGKILL. Step c
touches `<counters>/c.started` when it starts; the first time, it then hangs, so the test
can kill the worker right after b's record was committed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from perdure import Engine, RunContext

LEASE = 2.0
HEARTBEAT = 0.5
TASK_ID = "durable-crash-abc"


def count(counters: Path, name: str) -> int:
    path = counters / name
    return len(path.read_text().splitlines()) if path.exists() else 0


def build_engine(url: str, counters: Path, **options: Any) -> Engine:
    engine = Engine(
        url, lease=LEASE, heartbeat=HEARTBEAT, poll_interval=0.1, shutdown_grace=1, **options
    )

    def completed(name: str) -> str:
        with (counters / name).open("a") as f:
            f.write("done\n")
        return name

    async def step_c() -> str:
        marker = counters / "c.started"
        first = not marker.exists()
        marker.write_text("started\n")
        if first:
            await asyncio.sleep(30)  # the worker is SIGKILLed meanwhile
        return completed("c")

    @engine.task(id=TASK_ID)
    async def abc(ctx: RunContext) -> list[str]:
        a = await ctx.step("a", completed, "a")
        b = await ctx.step("b", completed, "b")
        c = await ctx.step("c", step_c)
        return [a, b, c]

    return engine
