"""Procrastinate: PostgreSQL task queue (LISTEN/NOTIFY wake-ups, one job fetched per query).

Settings: `PsycopgConnector` with a pool of `POOL` (10) connections per process, worker
`concurrency` `CONCURRENCY` (async jobs; Procrastinate's docs: concurrency is for async tasks,
and the pool must be large enough for it), `listen_notify=True` (default), the default
`fetch_job_polling_interval` (5 s, a fallback to notifications), finished jobs kept (default
`delete_jobs="never"`). Pre-queued jobs are deferred with `Task.batch_defer_async`, 1,000 per
call (one statement each).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from common import RECORDER, wait_for_go
from procrastinate import App, PsycopgConnector

CONCURRENCY = 10
POOL = 10
CHUNK = 1000


async def noop(t0: float) -> None:
    RECORDER.record(t0)


class Peer:
    name = "procrastinate"
    uses_postgres = True

    def __init__(self, url: str, redis_url: str, poll_interval: float | None) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.app: App | None = None

    @staticmethod
    def versions() -> dict[str, str]:
        return {"procrastinate": version("procrastinate")}

    def settings(self) -> dict[str, Any]:
        return {
            "worker concurrency": CONCURRENCY,
            "pool max_size": POOL,
            "listen_notify": True,
            "enqueue": f"batch_defer_async, {CHUNK}/call",
        }

    def _open(self, pool: int) -> None:
        connector = PsycopgConnector(conninfo=self.url, min_size=1, max_size=pool)
        self.app = App(connector=connector)
        self.app.task(name="noop", queue="bench")(noop)
        self.loop.run_until_complete(self.app.open_async())

    # --- driver --------------------------------------------------------------------------------

    def setup(self) -> None:
        self._open(2)
        assert self.app is not None
        self.loop.run_until_complete(self.app.schema_manager.apply_schema_async())

    def enqueue_bulk(self, n: int) -> None:
        deferrer = self.app.configure_task("noop")

        async def defer() -> None:
            for first in range(0, n, CHUNK):
                size = min(CHUNK, n - first)
                await deferrer.batch_defer_async(*({"t0": 0.0} for _ in range(size)))

        self.loop.run_until_complete(defer())

    def enqueue_one(self, t0: float) -> None:
        self.loop.run_until_complete(self.app.configure_task("noop").defer_async(t0=t0))

    def close(self) -> None:
        self.loop.run_until_complete(self.app.close_async())
        self.loop.close()

    # --- worker --------------------------------------------------------------------------------

    def worker_main(self, concurrency: int) -> None:
        self._open(POOL)
        if not wait_for_go():
            return
        self.loop.run_until_complete(
            self.app.run_worker_async(
                queues=["bench"],
                concurrency=concurrency or CONCURRENCY,
                install_signal_handlers=False,
                wait=True,
            )
        )
