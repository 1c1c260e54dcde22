"""`RunContext`: what a task body sees of its run."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING, Any

from perdure.core.models import Run

if TYPE_CHECKING:
    from perdure.engine.engine import Engine


class Signal:
    """A flag set once by the engine, readable from async code and from threads."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        return self._flag.is_set()

    def __bool__(self) -> bool:
        return self._flag.is_set()

    def set(self) -> None:
        with self._lock:
            self._flag.set()
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        if self._flag.is_set():
            return
        event = asyncio.Event()
        with self._lock:
            if self._flag.is_set():
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()

    def wait_sync(self, timeout: float | None = None) -> bool:
        return self._flag.wait(timeout)


class RunContext:
    """Passed to every task body as its first argument.

    `cancelled` is set when the run is cancelled or this worker lost its lease; `shutdown` when
    the worker is shutting down (finish quickly or be released back to the queue).
    """

    def __init__(self, engine: Engine, run: Run, worker_id: str) -> None:
        self.engine = engine
        self.run = run
        self.run_id = run.id
        self.task_id = run.task_id
        self.attempt = run.attempt
        self.worker_id = worker_id
        self.metadata: dict[str, Any] = dict(run.metadata)
        self.cancelled = Signal()
        self.shutdown = Signal()
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"perdure.task.{run.task_id}"),
            {"run_id": run.id, "task_id": run.task_id, "attempt": run.attempt,
             "worker_id": worker_id},
        )

    def __repr__(self) -> str:
        return f"<RunContext run={self.run_id} task={self.task_id!r} attempt={self.attempt}>"
