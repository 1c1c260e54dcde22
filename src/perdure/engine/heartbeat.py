"""Lease renewal from a dedicated thread with its own database connection, so a task that
blocks the event loop (CPU-bound code) still heartbeats and is not declared dead.

Every `check_interval` it also asks which of this worker's attempts it still owns: a run
cancelled from another process, or whose lease another worker recovered, is reported lost
and its attempt is stopped. `check_now()` runs that check at once (a cancel notification that
names no run: "look again").

Every `interval` it also looks for strays: runs leased to this worker that it is not running,
left by a claim whose answer never arrived (the connection dropped after its commit). One seen
at two beats in a row, once every claim sent before the first sighting has been handled, is
released to the queue at once, instead of waiting out its lease and being counted as lost.

Failures go to the worker's circuit breaker, which logs the outage once; while it is open the
heartbeat retries at the breaker's pace, and it never stops beating because of an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from perdure.core.clock import Clock
from perdure.core.errors import PerdureError
from perdure.engine.breaker import CircuitBreaker
from perdure.storage import Storage, make_storage

log = logging.getLogger("perdure.worker")

Attempts = list[tuple[str, int]]


class Heartbeat:
    def __init__(
        self,
        *,
        storage: Storage,
        worker_id: str,
        lease: float,
        interval: float,
        check_interval: float,
        clock: Clock,
        snapshot: Callable[[], Attempts],
        on_lost: Callable[[Attempts], None],
        claims: Callable[[], tuple[int, int]] = lambda: (0, 0),
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._main_storage = storage
        self._worker_id = worker_id
        self._lease = lease
        self._interval = interval
        self._check_interval = check_interval
        self._clock = clock
        self._snapshot = snapshot
        self._on_lost = on_lost
        self._stop = threading.Event()
        # Set on the event loop, waited on by the heartbeat thread: a threading.Event is safe
        # across that boundary, and every poke before a check starts is served by that check.
        self._poked = threading.Event()
        self._poked_on_loop = asyncio.Event()  # the same, when beating on the loop
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_extend = time.monotonic()
        self._claims = claims  # (claims sent, claims done) by the worker
        self._unknown: set[tuple[str, int]] = set()  # leased here, not running at the last beat
        self._unknown_sent = 0  # claims sent before the read that found `_unknown`
        self._breaker = breaker or CircuitBreaker(log_extra={"worker_id": worker_id})

    def start(self) -> None:
        if self._main_storage.is_shared:
            self._thread = threading.Thread(
                target=self._thread_main, name="perdure-heartbeat", daemon=True
            )
            self._thread.start()
        else:
            # An in-memory database is private to this connection, and no other process can
            # take its leases: beating on the loop is enough.
            self._task = asyncio.get_running_loop().create_task(self._loop_main())

    def check_now(self) -> None:
        """Check now, not at the next interval, which attempts this worker still owns; call
        it on the worker's event loop. Pokes that arrive before the check starts share it."""
        self._poked.set()
        self._poked_on_loop.set()

    async def stop(self) -> None:
        self._stop.set()
        self._poked.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)

    def _pauses(self) -> tuple[float, float]:
        """Seconds until the next beat, as (deaf to pokes, then ended by one): the check
        interval, or longer while the breaker is open, when pokes must not add retries."""
        backoff = self._breaker.wait_time()
        return backoff, max(0.0, self._check_interval - backoff)

    def _thread_main(self) -> None:
        storage = make_storage(self._main_storage.url)
        with asyncio.Runner() as runner:
            try:
                while not self._stop.is_set():
                    self._poked.clear()  # a poke from now on asks for one more check
                    runner.run(self._beat(storage))
                    backoff, interval = self._pauses()
                    self._stop.wait(backoff)
                    self._poked.wait(interval)
            finally:
                runner.run(storage.close())

    async def _loop_main(self) -> None:
        while not self._stop.is_set():
            self._poked_on_loop.clear()
            await self._beat(self._main_storage)
            backoff, interval = self._pauses()
            await asyncio.sleep(backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked_on_loop.wait(), interval)

    async def _beat(self, storage: Storage) -> None:
        claims_done = self._claims()[1]  # before the snapshot: their runs are in it
        attempts = self._snapshot()
        due = time.monotonic() - self._last_extend >= self._interval
        if not attempts and not due:
            return
        try:
            # Opened here, not before the loop: the database may be down when the thread
            # starts, and the thread must keep beating once it is back.
            await storage.open(migrate=False)
            if due:
                owned = await storage.extend_leases(
                    self._worker_id, attempts, self._lease, self._clock.time()
                )
                self._last_extend = time.monotonic()
                await self._release_strays(storage, attempts, claims_done)
            else:
                owned = await storage.owned_runs(self._worker_id, attempts)
        except Exception as exc:  # the heartbeat must outlive any failure
            if not isinstance(exc, PerdureError):
                log.exception("heartbeat failed unexpectedly", extra={"worker_id": self._worker_id})
            self._breaker.record_failure(exc)
            return
        self._breaker.record_success()
        lost = [(run_id, attempt) for run_id, attempt in attempts if run_id not in owned]
        if lost:
            self._on_lost(lost)

    async def _release_strays(self, storage: Storage, running: Attempts, claims_done: int) -> None:
        # A run is leased here only by a claim sent before the read that finds it. Once every
        # claim sent before the last beat's read is done (its runs started, or it failed), a
        # run found then and now but in neither snapshot was lost by its claim. Counting
        # claims, not time, keeps a claim whose answer waits behind a blocked loop out of it.
        sent = self._claims()[0]
        unknown = set(await storage.leased_runs(self._worker_id)).difference(running)
        settled = claims_done >= self._unknown_sent
        strays: set[tuple[str, int]] = unknown & self._unknown if settled else set()
        self._unknown, self._unknown_sent = unknown - strays, sent
        strays.difference_update(self._snapshot())
        if not strays:
            return
        # Fenced on (run, attempt, this worker, running): a run recovered or finished since
        # is left alone. Only claims start runs here, and no claim returns a running run.
        released = await storage.release_runs(self._worker_id, sorted(strays), self._clock.time())
        if released:
            log.warning(
                "released %d runs leased to worker %s that it was not running (a claim whose "
                "answer was lost): %s",
                released,
                self._worker_id,
                ", ".join(run_id for run_id, _ in sorted(strays)),
                extra={"worker_id": self._worker_id},
            )
