"""Blocking twins (`*_sync`). The async method is the implementation; a `_sync` call runs it on
the engine's event loop: the loop already running in another thread (a worker, or a `def` task
body calling back), or a private background loop the engine starts on first use."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from perdure.core.errors import SyncInAsyncError

if TYPE_CHECKING:
    from perdure.engine.engine import Engine

T = TypeVar("T")


class Portal:
    """An event loop running in a daemon thread, for callers that have no loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="perdure-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def ensure_no_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncInAsyncError(name)


def run_sync(engine: Engine, name: str, factory: Callable[[], Awaitable[T]]) -> T:
    """Run `factory()` to completion from synchronous code (refused inside a running loop)."""
    ensure_no_loop(name)

    async def runner() -> T:
        return await factory()

    loop = engine._home_loop  # pyright: ignore[reportPrivateUsage]
    if loop is not None and loop.is_running() and not loop.is_closed():
        return asyncio.run_coroutine_threadsafe(runner(), loop).result()
    return engine._portal_for_sync().call(runner())  # pyright: ignore[reportPrivateUsage]
