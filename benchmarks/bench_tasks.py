"""The engine and the no-op task every benchmark process defines identically."""

from __future__ import annotations

from perdure import Engine, RunContext, Task

NOOP_TASK_ID = "bench.noop"


def make_engine(
    url: str, *, concurrency: int = 100, poll_interval: float | None = None
) -> tuple[Engine, Task[int, None]]:
    """An engine on `url` with the benchmark's no-op task defined on it."""
    engine = Engine(url, concurrency=concurrency, poll_interval=poll_interval)

    @engine.task(id=NOOP_TASK_ID)
    async def noop(ctx: RunContext, n: int) -> None:
        return None

    return engine, noop
