"""Group commit of durable-call records: the write behind every `ctx.step`.

A record is written before the step's result reaches the body, fenced on its attempt's lease
(run id, attempt, lease owner, running). On PostgreSQL the records of every attempt that
records at the same moment go in ONE autocommit statement (`record_steps`): one round trip
and one commit — one WAL flush — for all of them, instead of BEGIN, fence, insert, event,
COMMIT for each. A write never waits for company: an idle writer sends at once, and records
that arrive while a statement is in flight go together in the next one. SQLite has no
round trips to save: each record is one BEGIN IMMEDIATE transaction, written at once.
Progress and log events of a running attempt (no record) are written the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from perdure.core.errors import StorageError
from perdure.storage.database import ConflictError, Database

#: Runs per statement; more wait for the next one.
MAX_BATCH = 256

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(slots=True)
class Records:
    """What one fenced write records for one run: `fence` (id, attempt, worker_id, n_events,
    now), the step rows, and the event rows (run_id, n = offset in this write, type, at, data)."""

    fence: dict[str, Any]
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    waiters: list[asyncio.Future[bool]] = field(default_factory=lambda: [])

    def same_attempt(self, other: Records) -> bool:
        mine, theirs = self.fence, other.fence
        return mine["attempt"] == theirs["attempt"] and mine["worker_id"] == theirs["worker_id"]

    def merge(self, other: Records) -> None:
        """Append another write of the same attempt (`asyncio.gather` over steps)."""
        offset = self.fence["n_events"]
        self.fence["n_events"] = offset + other.fence["n_events"]
        self.fence["now"] = max(self.fence["now"], other.fence["now"])
        self.steps += other.steps
        self.events += [{**event, "n": event["n"] + offset} for event in other.events]
        self.waiters += other.waiters


class GroupCommit:
    """Writes fenced records, batching concurrent writers into one statement where the
    backend writes in one statement (`Database.writes_in_one_statement`)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[Records] = []
        #: True while a statement is in flight (written inline or by the drain task).
        self._busy = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: asyncio.Task[None] | None = None

    async def record(self, records: Records, *, alone: bool = False) -> bool:
        """True: written. False: the attempt failed its fence; nothing was written.
        `ConflictError`: a position or token id is taken (by these records or, batched, by
        another run's); nothing was written. `alone`: in a statement of their own."""
        if alone or not self.db.writes_in_one_statement:
            return records.fence["id"] in await self._write([records])
        loop = asyncio.get_running_loop()
        if not self._busy:
            # Idle: write at once, in the caller's task. Records arriving meanwhile queue up
            # and go together in the next statement, written by the drain task.
            self._busy, self._loop = True, loop
            try:
                return records.fence["id"] in await self._write([records])
            finally:
                if self._pending:
                    self._writer = loop.create_task(
                        self._drain(), name="perdure-step-records", context=contextvars.Context()
                    )
                else:
                    self._busy = False
        if self._loop is not loop:
            # Another event loop is writing (a storage shared across loops): no batching.
            return records.fence["id"] in await self._write([records])
        done: asyncio.Future[bool] = loop.create_future()
        records.waiters.append(done)
        self._pending.append(records)
        # Cancelling this waiter does not withdraw the records: they may still be written,
        # as a transaction already sent may still commit.
        return await done

    async def _drain(self) -> None:
        batch: list[Records] = []
        try:
            while self._pending:
                batch = self._take()
                try:
                    fenced = await self._write(batch)
                except Exception as exc:
                    for records in batch:
                        _settle(records, exc)
                else:
                    for records in batch:
                        _settle(records, records.fence["id"] in fenced)
                batch = []
        except BaseException:  # cancelled (the loop is closing): no waiter may hang
            lost = StorageError("the step record writer was stopped; the write may be lost")
            for records in batch + self._pending:
                _settle(records, lost)
            self._pending.clear()
            raise
        finally:
            self._busy = False

    def _take(self) -> list[Records]:
        """The next batch: one entry per run (a run's concurrent writes merged), in order."""
        by_run: dict[str, Records] = {}
        rest: list[Records] = []
        for records in self._pending:
            run_id = records.fence["id"]
            first = by_run.get(run_id)
            if first is None and len(by_run) < MAX_BATCH:
                by_run[run_id] = records
            elif first is not None and first.same_attempt(records):
                first.merge(records)
            else:  # another attempt of the same run (a stale one), or a full batch
                rest.append(records)
        self._pending = rest
        return list(by_run.values())

    async def _write(self, batch: Sequence[Records]) -> set[str]:
        """Write a batch (one entry per run); returns the ids of the runs that were fenced."""
        fences = [records.fence for records in batch]
        async with self.db.statement() as tx:
            if self.db.writes_in_one_statement:
                # Safe under concurrency: each run's fence is checked on its locked row (rows
                # locked in id order), and any conflict aborts the whole statement.
                steps = [row for records in batch for row in records.steps]
                events = [row for records in batch for row in records.events]
                found = await tx.fetch_batch(
                    "record_steps", fences, {"steps": _encode(steps), "events": _encode(events)}
                )
                return {row["id"] for row in found}
            # One transaction: fence (reserving event numbers), then the records and events
            # of the fenced runs; a conflict rolls all of it back.
            found = await tx.fetch_batch("record_steps", fences)
            before = {row["id"]: row["seq_before"] for row in found}
            steps = [row for r in batch if r.fence["id"] in before for row in r.steps]
            if len(await tx.fetch_batch("insert_steps", steps)) != len(steps):
                raise ConflictError("a step position or token id is already recorded")
            events = [
                {
                    "run_id": event["run_id"],
                    "seq": before[event["run_id"]] + event["n"],
                    "type": event["type"],
                    "at": event["at"],
                    "data": event["data"],
                }
                for r in batch
                if r.fence["id"] in before
                for event in r.events
            ]
            await tx.execute_batch("insert_events", events)
            return set(before)


def _settle(records: Records, outcome: bool | BaseException) -> None:
    for waiter in records.waiters:
        if waiter.done():  # its caller was cancelled
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(_copy(outcome))
        else:
            waiter.set_result(outcome)


def _copy(exc: BaseException) -> BaseException:
    """A copy per waiter: each raises it in its own task, adding its own traceback."""
    try:
        clone = copy.copy(exc)
    except Exception:  # an exception class that cannot be rebuilt from its args
        return exc
    clone.__cause__, clone.__traceback__ = exc.__cause__, exc.__traceback__
    return clone
