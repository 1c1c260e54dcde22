"""PgQueuer: PostgreSQL job queue (LISTEN/NOTIFY wake-ups, batched dequeue, buffered status
writes).

Settings: the asyncpg driver (PgQueuer's documented default), `QueueManager.run(batch_size=
BATCH)` (jobs dequeued per query; default 10, raised for throughput as its docs suggest for
many short jobs), no per-entrypoint or worker concurrency cap, tables installed with the
default durability (logged tables). Pre-queued jobs are enqueued with the list form of
`Queries.enqueue`, 1,000 per call (one statement).
"""

from __future__ import annotations

import asyncio
import struct
from importlib.metadata import version
from typing import Any

import asyncpg
from common import RECORDER, wait_for_go
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

BATCH = 100
CHUNK = 1000


class Peer:
    name = "pgqueuer"
    uses_postgres = True

    def __init__(self, url: str, redis_url: str, poll_interval: float | None) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection | None = None
        self.queries: Queries | None = None

    @staticmethod
    def versions() -> dict[str, str]:
        return {"pgqueuer": version("pgqueuer"), "asyncpg": version("asyncpg")}

    def settings(self) -> dict[str, Any]:
        return {"driver": "asyncpg", "batch_size": BATCH, "enqueue": f"list enqueue, {CHUNK}/call"}

    def _connect(self) -> Queries:
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.url))
        self.queries = Queries(AsyncpgDriver(self.conn))
        return self.queries

    # --- driver --------------------------------------------------------------------------------

    def setup(self) -> None:
        queries = self._connect()
        self.loop.run_until_complete(queries.install())

    def enqueue_bulk(self, n: int) -> None:
        assert self.queries is not None
        payload = struct.pack("d", 0.0)

        async def enqueue() -> None:
            assert self.queries is not None
            for first in range(0, n, CHUNK):
                size = min(CHUNK, n - first)
                await self.queries.enqueue(["noop"] * size, [payload] * size, [0] * size)

        self.loop.run_until_complete(enqueue())

    def enqueue_one(self, t0: float) -> None:
        assert self.queries is not None
        self.loop.run_until_complete(self.queries.enqueue("noop", struct.pack("d", t0)))

    def close(self) -> None:
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    # --- worker --------------------------------------------------------------------------------

    def worker_main(self, concurrency: int) -> None:
        async def serve() -> None:
            conn = await asyncpg.connect(self.url)
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            @qm.entrypoint("noop")
            async def noop(job: Job) -> None:
                assert job.payload is not None
                RECORDER.record(struct.unpack("d", job.payload)[0])

            if not await asyncio.to_thread(wait_for_go):
                return
            await qm.run(batch_size=BATCH)

        self.loop.run_until_complete(serve())
