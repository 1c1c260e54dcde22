"""Celery with a Redis broker and the threads pool.

Settings (Celery's optimizing guide for many short tasks): `--pool threads --concurrency
CONCURRENCY`, `worker_prefetch_multiplier` PREFETCH, results ignored (`task_ignore_result`;
no result backend), early acks (the default), `--without-gossip --without-mingle
--without-heartbeat`. Pre-queued jobs are published with `apply_async` through one producer
(Celery has no batch publish). Durability: Celery keeps messages in Redis, whose persistence
is the Redis server's (stated in the results), not a database transaction per job.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from celery import Celery
from common import RECORDER, wait_for_go

CONCURRENCY = 16
PREFETCH = 64

app = Celery("perdure_bench")


@app.task(name="noop", ignore_result=True)
def noop(t0: float) -> None:
    RECORDER.record(t0)


class Peer:
    name = "celery"
    uses_postgres = False

    def __init__(self, url: str, redis_url: str, poll_interval: float | None) -> None:
        self.redis_url = redis_url
        app.conf.update(
            broker_url=redis_url,
            task_ignore_result=True,
            task_default_queue="bench",
            worker_prefetch_multiplier=PREFETCH,
            broker_connection_retry_on_startup=True,
            worker_hijack_root_logger=False,
        )

    @staticmethod
    def versions() -> dict[str, str]:
        return {
            "celery": version("celery"),
            "kombu": version("kombu"),
            "redis-py": version("redis"),
        }

    def settings(self) -> dict[str, Any]:
        return {
            "broker": "redis",
            "pool": "threads",
            "concurrency": CONCURRENCY,
            "worker_prefetch_multiplier": PREFETCH,
            "results": "ignored",
            "enqueue": "apply_async through one producer",
        }

    # --- driver --------------------------------------------------------------------------------

    def setup(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()

    def enqueue_bulk(self, n: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async((0.0,), producer=producer)

    def enqueue_one(self, t0: float) -> None:
        noop.apply_async((t0,))

    def close(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()

    # --- worker --------------------------------------------------------------------------------

    def worker_main(self, concurrency: int) -> None:
        app.connection_for_write().ensure_connection(max_retries=3)
        if not wait_for_go():
            return
        app.worker_main(
            argv=[
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency or CONCURRENCY}",
                "--queues=bench",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]
        )
