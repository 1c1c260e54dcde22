"""The maintenance sweep every worker runs: recover expired leases, wake suspended runs whose
waits all settled, expire runs whose TTL passed, prune rate-limit history.

Safe on every worker at once: each row changes under a conditional UPDATE (recoveries also
`SKIP LOCKED`), so concurrent sweepers split the work and never both move one run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from perdure.engine.breaker import CircuitBreaker
from perdure.engine.config import EngineOptions
from perdure.storage import Storage

log = logging.getLogger("perdure.worker")

#: Seconds between two prunes of the rate-limit history.
PRUNE_INTERVAL = 60.0


class Sweeper:
    def __init__(
        self,
        *,
        storage: Storage,
        options: EngineOptions,
        breaker: CircuitBreaker,
        finished: Callable[[str], None],
        failed: Callable[[Exception], object],
        stopping: Callable[[], bool],
        worker_id: str,
    ) -> None:
        self._storage = storage
        self._options = options
        self._breaker = breaker
        self._finished = finished  # a run ended here: its waiters look again
        self._failed = failed  # a storage call failed: the worker's breaker hears of it
        self._stopping = stopping
        self._worker_id = worker_id
        self._last_prune = 0.0

    async def loop(self) -> None:
        """Sweep until the worker stops. It also cancels this task, but a cancellation that
        lands inside a database driver's call may be absorbed there: the flag ends it too."""
        options = self._options
        interval = min(1.0, options.lease / 4, options.poll_interval * 2)
        while not self._stopping():
            await self._breaker.wait()
            await self.run(recover_leases=not self._holding_recovery())
            await asyncio.sleep(interval)

    def _holding_recovery(self) -> bool:
        """Right after a database outage, leases that expired during it mostly belong to
        live workers that are reconnecting: give them as long as the outage lasted (plus the
        breaker's longest retry wait, at most one lease) to renew before taking their runs.
        While the breaker is open, this sweep is a probe: it recovers nothing either."""
        breaker = self._breaker
        if breaker.is_open:
            return True
        closed_at = breaker.closed_at
        if closed_at is None:
            return False
        hold = min(self._options.lease, breaker.last_outage + breaker.max_delay)
        return time.monotonic() - closed_at < hold

    async def run(self, *, recover_leases: bool = True) -> None:
        """One sweep; a failure goes to the breaker (the loop must outlive any failure)."""
        storage = self._storage
        try:
            now = self._options.clock.time()
            recovered = (
                await storage.recover_expired_leases(now, self._options.max_lost_leases)
                if recover_leases
                else []
            )
            for run in recovered:
                log.warning(
                    "recovered run %s from a lost lease (%d lost so far) -> %s",
                    run.id,
                    run.lost_leases,
                    run.status.value,
                    extra={
                        "run_id": run.id,
                        "task_id": run.task_id,
                        "attempt": run.attempt,
                        "worker_id": self._worker_id,
                    },
                )
                if run.status.is_terminal:
                    self._finished(run.id)
            await storage.wake_missed(now)
            if now - self._last_prune >= PRUNE_INTERVAL:  # keep the history table small
                await storage.prune_rate_starts(now)
                self._last_prune = now
            for run_id in await storage.expire_runs(now):
                self._finished(run_id)
            self._breaker.record_success()
        except Exception as exc:
            self._failed(exc)
