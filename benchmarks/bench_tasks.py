"""The engine and the tasks (no-op, latency probe) every benchmark process defines identically."""

from __future__ import annotations

import time

from perdure import Engine, RunContext, Task

NOOP_TASK_ID = "bench.noop"
#: Input: the wall-clock time taken just before the trigger call; output: body start - input.
LATENCY_TASK_ID = "bench.latency"


def make_engine(
    url: str, *, concurrency: int = 100, poll_interval: float | None = None
) -> tuple[Engine, Task[int, None]]:
    """An engine on `url` with the benchmark's no-op task defined on it."""
    engine = Engine(url, concurrency=concurrency, poll_interval=poll_interval)

    @engine.task(id=NOOP_TASK_ID)
    async def noop(ctx: RunContext, n: int) -> None:
        return None

    @engine.task(id=LATENCY_TASK_ID)
    async def latency(ctx: RunContext, t0: float) -> float:
        return time.time() - t0

    return engine, noop
