"""Callers waiting for runs to finish (`RunHandle.wait`), served by one reader.

A "finished" notification marks its run to be read again; one reader task reads every marked
run in one query and hands each finished snapshot to its callers. A shared poll, slowing from
10 ms to `poll_interval`, marks every waited run: the safety net for a notification that never
arrives (a listener reconnecting, a process without wake-ups). So a thousand callers waiting on
a thousand runs cost a few queries, not a read per caller per poll.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from perdure.core.errors import RunNotFoundError
from perdure.core.models import Run

FIRST_POLL = 0.01

Futures = dict[str, list[asyncio.Future[Run]]]
F = TypeVar("F")


class RunWaiters:
    """Lives on the engine's home loop; every method is called from it."""

    def __init__(
        self,
        read: Callable[[Sequence[str], bool], Awaitable[dict[str, Run | None]]],
        poll_interval: float,
    ) -> None:
        # `read(ids, known)`: every existing run of the ids, its snapshot if finished, else
        # None; with `known` (runs seen to exist), only the finished ones.
        self._read = read
        self._poll_interval = poll_interval
        self._finished: Futures = {}  # callers of `finished`, per run
        self._notified: dict[str, list[asyncio.Future[None]]] = {}  # callers of `notified`
        self._marked: set[str] = set()  # runs to read in the reader's next query
        self._known: set[str] = set()  # waited runs a read has found: not to look up again
        self._mark_event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._poll = FIRST_POLL  # the next safety poll's wait

    async def finished(self, run_id: str, timeout: float | None) -> Run:
        """The run's snapshot once its status is terminal. Raises `RunNotFoundError`, the
        storage's error, or `TimeoutError` after `timeout` seconds."""
        future: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        self._finished.setdefault(run_id, []).append(future)
        # The first read is marked after registering: a notification from then on is not lost.
        # A new caller restarts the poll's slowing down, as if it polled alone: without
        # notifications (another process on a platform without SQLite wake-ups) a short run's
        # result still comes in tens of milliseconds, for one query per poll at most.
        self._poll = FIRST_POLL
        self._mark(run_id)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            _remove(self._finished, run_id, future)
            if run_id not in self._finished:
                self._known.discard(run_id)
            if not self._finished:
                self._mark_event.set()  # the reader ends now rather than at its next poll

    async def notified(self, run_id: str, timeout: float) -> None:
        """Return when the run is notified as finished, or after `timeout` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._notified.setdefault(run_id, []).append(future)
        try:
            await asyncio.wait([future], timeout=timeout)
        finally:
            _remove(self._notified, run_id, future)

    def wake(self, run_id: str) -> None:
        """A "finished" notification (or this process finished the run): look again."""
        for future in self._notified.get(run_id, ()):
            if not future.done():
                future.set_result(None)
        if run_id in self._finished:
            self._mark(run_id)

    def wake_all(self) -> None:
        """A "look again" notification: any run may have finished."""
        for run_id in list(self._notified):
            self.wake(run_id)
        for run_id in list(self._finished):
            self._mark(run_id)

    def _mark(self, run_id: str) -> None:
        self._marked.add(run_id)
        self._mark_event.set()
        if self._reader is None or self._reader.done():
            # A context of its own: a copy of the caller's (a task body's) would keep that
            # attempt's RunContext alive as long as the reader runs.
            self._reader = asyncio.get_running_loop().create_task(
                self._read_loop(), context=contextvars.Context()
            )

    # --- the reader --------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while self._finished:
            if not self._marked:
                try:
                    async with asyncio.timeout(self._poll):
                        await self._mark_event.wait()
                except TimeoutError:  # the safety poll: every waited run
                    self._marked.update(self._finished)
                    self._poll = min(self._poll * 2, self._poll_interval)
            self._mark_event.clear()
            ids = [run_id for run_id in self._marked if run_id in self._finished]
            self._marked.clear()
            if ids:
                await self._hand_over(ids)

    async def _hand_over(self, ids: list[str]) -> None:
        # A run found once is then read only when finished: a poll over a thousand waited
        # runs reads the few that finished, not a thousand rows. (Runs are deleted only
        # once finished, by retention, long after their waiters read them.)
        new = [run_id for run_id in ids if run_id not in self._known]
        known = [run_id for run_id in ids if run_id in self._known]
        try:
            found = await self._read(new, False) if new else {}
            finished = await self._read(known, True) if known else {}
        except Exception as exc:  # the storage's error goes to the callers it concerns
            for run_id in ids:
                self._settle(run_id, exc)
            return
        for run_id in new:
            if run_id not in found:
                self._settle(run_id, RunNotFoundError(run_id))
            elif (run := found[run_id]) is not None:
                self._settle(run_id, run)
            elif run_id in self._finished:  # its callers may have left during the read
                self._known.add(run_id)
        for run_id, run in finished.items():
            if run is not None:
                self._settle(run_id, run)

    def _settle(self, run_id: str, result: Run | Exception) -> None:
        for future in self._finished.get(run_id, ()):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _remove(registry: dict[str, list[F]], run_id: str, future: F) -> None:
    futures = registry.get(run_id)
    if futures is None:
        return
    if future in futures:
        futures.remove(future)
    if not futures:
        del registry[run_id]
