"""Helpers of the task-tree tests (tests/engine/test_trees_*.py).

The tests use the engine tier's fixtures (`make_engine`, `engine`, `clock`, `shared_url`), so
they run on every backend `backend_url` provides: a SQLite file, `memory://`, PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from perdure import Engine, RetryPolicy, Run, RunStatus

from ..support import wait_until

NO_RETRY = RetryPolicy(max_attempts=1)
#: Retries that do not slow a test down.
FAST_RETRY = RetryPolicy(max_attempts=5, base_delay=0.01, multiplier=1.0, max_delay=0.01)


class Calls(Counter[str]):
    """How many times each side effect ran."""

    def hit(self, name: str) -> None:
        self[name] += 1


class Gate:
    """Task bodies wait on `gate.wait()` until the test calls `open()`; `entered` counts
    the bodies that reached it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.entered = 0

    async def wait(self) -> None:
        self.entered += 1
        await self.event.wait()

    def open(self) -> None:
        self.event.set()

    async def wait_entered(self, n: int) -> None:
        await wait_until(lambda: self.entered >= n, what=f"{n} task bodies at the gate")


async def runs_of(engine: Engine, task_id: str) -> list[Run]:
    """Every run of the task, oldest first."""
    page = await engine.list_runs(task_id=task_id, limit=1000)
    return page.runs[::-1]


async def subtree(engine: Engine, run_id: str) -> list[Run]:
    """Every run below `run_id`, depth first, children in creation order."""
    found: list[Run] = []
    for child in await engine.children(run_id):
        found.append(child)
        found += await subtree(engine, child.id)
    return found


async def wait_running(engine: Engine, task_id: str, n: int) -> list[Run]:
    """Wait until `n` runs of the task are `running`."""
    seen: list[list[Run]] = []

    async def enough() -> bool:
        running = [r for r in await runs_of(engine, task_id) if r.status is RunStatus.RUNNING]
        seen.append(running)
        return len(running) >= n

    await wait_until(enough, what=f"{n} running runs of {task_id!r}")
    return seen[-1]
