"""DBOS Transact (`dbos`): durable workflows on a PostgreSQL system database, run from queues.

Settings (stated in the results): one queue `bench`, `worker_concurrency` 100 per process
(perdure's default slots per worker; DBOS's docs recommend bounding it, and without it one
poll dequeues every queued workflow at once onto an unbounded thread pool), the queue's
`polling_interval_sec` either DBOS's default (1.0 s) or 0.01 s, a unique `executor_id` per
process, the no-op as a plain `def` workflow on DBOS's executor threads (measured faster here
than an `async def` workflow on its event loop: ~1,000 vs ~700 jobs/s). Pre-queued jobs are
enqueued with `DBOSClient.enqueue_in_transaction`, 1,000 per transaction (DBOS's batch path);
single jobs with `DBOSClient.enqueue`. Queue dequeueing polls: DBOS does not wake a queue on
LISTEN/NOTIFY.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from importlib.metadata import version
from typing import Any

import sqlalchemy as sa
from common import RECORDER, percentile, wait_for_go
from dbos import DBOS, DBOSClient, EnqueueOptions

APP = "perdure-bench"
APP_VERSION = "bench"
QUEUE = "bench"
WORKER_CONCURRENCY = 100
CHUNK = 1000


@DBOS.workflow(name="noop")
def noop(t0: float) -> None:
    RECORDER.record(t0)


STEP_TIMINGS: list[float] = []


@DBOS.step(name="noop_step")
def noop_step() -> None:
    return None


@DBOS.workflow(name="steps")
def steps(n: int) -> int:
    for _ in range(n):
        started = time.perf_counter()
        noop_step()
        STEP_TIMINGS.append(time.perf_counter() - started)  # list.append: thread-safe
    return n


def _config(url: str) -> Any:
    return {
        "name": APP,
        "system_database_url": url,
        "application_version": APP_VERSION,
        "executor_id": f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        "log_level": "WARNING",
    }


class Peer:
    name = "dbos"
    uses_postgres = True

    def __init__(self, url: str, redis_url: str, poll_interval: float | None) -> None:
        self.url = url
        self.poll_interval = 1.0 if poll_interval is None else poll_interval
        self.client: DBOSClient | None = None
        self.engine: sa.Engine | None = None

    @staticmethod
    def versions() -> dict[str, str]:
        return {"dbos": version("dbos"), "sqlalchemy": version("sqlalchemy")}

    def settings(self) -> dict[str, Any]:
        return {
            "queue polling_interval_sec": self.poll_interval,
            "worker_concurrency": WORKER_CONCURRENCY,
            "workflow": "def (DBOS's thread pool; faster here than async def)",
            "enqueue": f"DBOSClient.enqueue_in_transaction, {CHUNK}/transaction",
        }

    # --- driver --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create DBOS's schema (a launch migrates) and register the queue, listening to none."""
        DBOS(config=_config(self.url))
        DBOS.listen_queues([])
        DBOS.launch()
        DBOS.register_queue(
            QUEUE,
            worker_concurrency=WORKER_CONCURRENCY,
            polling_interval_sec=self.poll_interval,
            on_conflict="always_update",
        )
        DBOS.destroy()
        self.client = DBOSClient(system_database_url=self.url, application_name=APP)
        self.engine = sa.create_engine(self.url.replace("postgresql://", "postgresql+psycopg://"))

    def _options(self) -> EnqueueOptions:
        return {"workflow_name": "noop", "queue_name": QUEUE, "app_version": APP_VERSION}

    def enqueue_bulk(self, n: int) -> None:
        assert self.client is not None
        assert self.engine is not None
        options = self._options()
        for first in range(0, n, CHUNK):
            with self.engine.begin() as conn:
                for _ in range(min(CHUNK, n - first)):
                    self.client.enqueue_in_transaction(conn, options, 0.0)

    def enqueue_one(self, t0: float) -> None:
        assert self.client is not None
        self.client.enqueue(self._options(), t0)

    def close(self) -> None:
        if self.client is not None:
            self.client.destroy()
        if self.engine is not None:
            self.engine.dispose()

    # --- worker --------------------------------------------------------------------------------

    def worker_main(self, concurrency: int) -> None:
        DBOS(config=_config(self.url))
        DBOS.listen_queues([QUEUE])
        if not wait_for_go():
            return
        DBOS.launch()  # the queue thread starts polling `bench`
        while True:
            time.sleep(3600)

    # --- steps ---------------------------------------------------------------------------------

    def steps(self, runs: int, steps_per_run: int, concurrency: int) -> dict[str, Any]:
        """One workflow of 200 no-op steps alone, then `runs` workflows of `steps_per_run`
        no-op steps, `concurrency` at a time, on a worker in this process; each `noop_step()`
        call is timed inside the workflow."""
        DBOS(config=_config(self.url))
        DBOS.launch()
        queue = DBOS.register_queue(
            "steps",
            worker_concurrency=concurrency,
            polling_interval_sec=self.poll_interval,
            on_conflict="always_update",
        )

        queue.enqueue(steps, 2).get_result()  # warm-up, not measured
        STEP_TIMINGS.clear()
        queue.enqueue(steps, 200).get_result()  # one workflow alone: the cost of a step
        alone = list(STEP_TIMINGS)
        STEP_TIMINGS.clear()
        started = time.perf_counter()
        handles = [queue.enqueue(steps, steps_per_run) for _ in range(runs)]
        for handle in handles:
            handle.get_result()
        wall = time.perf_counter() - started
        DBOS.destroy()
        timings = list(STEP_TIMINGS)
        return {
            "alone_p50_ms": percentile(alone, 50) * 1000,
            "alone_p99_ms": percentile(alone, 99) * 1000,
            "steps": len(timings),
            "p50_ms": percentile(timings, 50) * 1000,
            "p99_ms": percentile(timings, 99) * 1000,
            "mean_ms": statistics.fmean(timings) * 1000,
            "steps_per_s": len(timings) / wall,
        }
