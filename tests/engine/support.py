"""Helpers shared by the engine tests: bounded waits and event-history summaries."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from perdure import Engine, Run, RunEvent, RunStatus

WAIT_TIMEOUT = 10.0


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float = WAIT_TIMEOUT,
    what: str = "condition",
) -> None:
    """Poll `predicate` (sync or async) every 10 ms; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_status(
    engine: Engine, run_id: str, *statuses: RunStatus, timeout: float = WAIT_TIMEOUT
) -> Run:
    """Poll until the run is in one of `statuses`; returns that snapshot."""
    seen: list[Run] = []

    async def reached() -> bool:
        seen.append(await engine.get_run(run_id))
        return seen[-1].status in statuses

    names = ", ".join(s.value for s in statuses)
    await wait_until(reached, timeout=timeout, what=f"run {run_id} to be {names}")
    return seen[-1]


def types(events: list[RunEvent]) -> list[str]:
    return [event.type for event in events]


def count(events: list[RunEvent], type_: str) -> int:
    return sum(1 for event in events if event.type == type_)


class BackgroundWorker:
    """Runs `engine.run_worker()` on an event loop in a thread, so plain sync code (a test
    without a loop) can use the engine's `_sync` methods while the worker runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-worker", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.engine.start()
            self._started.set()
            await self.engine.run_worker(self._stop)

        try:
            asyncio.run(run())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()

    def __enter__(self) -> BackgroundWorker:
        self._thread.start()
        assert self._started.wait(10), "the background worker did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the background worker did not stop"
        if self._error is not None:
            raise self._error
