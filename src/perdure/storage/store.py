"""The storage operations, written once over the driver layer (`Database`).

Each public method is one transaction. Every write to a running attempt is fenced on
(run id, attempt, lease owner, status), so a stale worker's late write changes nothing.
Allowed source statuses come from `perdure.core.statuses`, so the SQL enforces the same
transition table as Python.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json

from perdure.core.errors import ErrorInfo, StorageError, WorkerLostError
from perdure.core.limits import QueueLimits
from perdure.core.models import NewRun, Outcome, Run, RunEvent, RunPage, TaskInfo
from perdure.core.statuses import TERMINAL_STATUSES, RunStatus, sources_of
from perdure.storage.database import (
    CHANNEL_CANCEL,
    CHANNEL_FINISHED,
    CHANNEL_WORK,
    ConflictError,
    Database,
    Listener,
    Row,
    Tx,
)
from perdure.storage.outcomes import (
    STOPS_SUBTREE,
    OutcomeBatch,
    SettledChild,
    ends_alone,
    finish_params,
    notify_ends,
    settled_result,
)
from perdure.storage.queries import load_migrations
from perdure.storage.queues import QueueStore, row_to_queue
from perdure.storage.rows import dumps, row_to_event, row_to_run, row_to_task
from perdure.storage.steps import StepStore, cancel_descendants, settle_child_waits
from perdure.storage.writes import CreatedData, EventLog, add_started_events, run_insert_params

log = logging.getLogger("perdure.storage")

_CLAIM_SOURCES = sources_of(RunStatus.RUNNING)
_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)


def _attempt_key(run_id: str, attempt: int) -> str:
    return f"{run_id}:{attempt}"


class Storage(StepStore, QueueStore):
    """High-level atomic operations on runs, events and the task catalog."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._opened = False
        #: Queues whose last seen settings pause or limit claims (see claim_runs).
        self._gated_queues: set[str] = set()

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def is_shared(self) -> bool:
        return self.db.is_shared

    def add_listener(self, listener: Listener) -> None:
        self.db.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.db.remove_listener(listener)

    async def open(self, *, migrate: bool = True) -> None:
        if self._opened:
            return
        await self.db.open()
        self._opened = True
        if migrate:
            await self.migrate()

    async def close(self) -> None:
        self._opened = False
        await self.db.close()

    # --- migrations --------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply pending migrations, each in one transaction holding the migration lock."""
        applied: list[int] = []
        for version, name, sql in load_migrations(self.db.dialect):
            async with self.db.migration_transaction() as tx:
                await self.db.run_script(
                    tx,
                    "CREATE TABLE IF NOT EXISTS perdure_migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT);",
                )
                done = await tx.fetchall("applied_migrations", {})
                if version in {row["version"] for row in done}:
                    continue
                await self.db.run_script(tx, sql)
                await tx.execute("record_migration", {"version": version, "name": name})
                applied.append(version)
                log.info("applied migration %04d_%s", version, name)
        return applied

    async def schema_version(self) -> int:
        async with self.db.reader() as tx:
            rows = await tx.fetchall("applied_migrations", {})
        return max((row["version"] for row in rows), default=0)

    # --- creating runs -----------------------------------------------------------------------

    async def create_runs(self, runs: Sequence[NewRun], now: float) -> list[tuple[str, bool]]:
        """Insert runs in one transaction; returns `(run id, created)` per run, in order. A run
        whose idempotency key is live returns the existing run's id instead (`created=False`);
        the unique index makes concurrent duplicate triggers collapse into one row even across
        processes. Ids only: building each stored run back was a fifth of a bulk trigger."""
        unkeyed = all(new.idempotency_key is None for new in runs)
        if runs and unkeyed and self.db.writes_in_one_statement:
            created = await self._create_at_once(runs, now)
            if created is not None:
                return created
        results: list[tuple[str, bool]] = []
        events = EventLog()
        # Runs without an idempotency key cannot collide with anything: one batch statement
        # inserts them all; keyed runs take the per-row path that looks for a live duplicate.
        plain: list[dict[str, Any]] = []
        created_data = CreatedData()
        async with self.db.transaction() as tx:
            await self.check_backpressure(tx, runs, now)
            for new in runs:
                params = run_insert_params(new, now)
                if new.idempotency_key is None:
                    plain.append(params)
                else:
                    key = {"task_id": new.task_id, "idempotency_key": new.idempotency_key}
                    await tx.execute("release_idempotency_key", {**key, "now": now})
                    existing = await tx.fetchone("find_idempotent_run", key)
                    if existing is None and await tx.fetchone("insert_run", params) is None:
                        # lost a race on the idempotency key
                        existing = await tx.fetchone("find_idempotent_run", key)
                        if existing is None:
                            raise StorageError(f"run {new.id!r} could not be inserted")
                    if existing is not None:
                        results.append((existing["id"], False))
                        continue
                events.add_json(new.id, 1, "created", now, created_data(new))
                results.append((new.id, True))
            # Fresh ids: a clash would fail the transaction, so nothing reads the result and
            # on PostgreSQL the insert travels with the events and COMMIT (one round trip).
            await tx.defer_batch("insert_runs", plain)
            await events.flush(tx)
            if any(created for _, created in results):
                tx.notify(CHANNEL_WORK)
        return results

    async def _create_at_once(
        self, runs: Sequence[NewRun], now: float
    ) -> list[tuple[str, bool]] | None:
        """PostgreSQL: runs without idempotency keys, their `created` events and the NOTIFY
        in ONE autocommit statement (one round trip instead of two, a sixth of the
        statements), which writes nothing when one of their queues has a depth cap; `None`
        then, and the caller takes the locked, counted path. (SQLite's local transaction is
        already as cheap: it keeps that path.) Like any first statement on a pooled
        connection found broken, it is replayed on another; had the first one committed, the
        replay fails on its fresh run ids (ConflictError), writes nothing twice, and the
        trigger reports the runs the first one created."""
        created_data = CreatedData()
        events = EventLog()
        rows: list[dict[str, Any]] = []
        for new in runs:
            rows.append(run_insert_params(new, now))
            events.add_json(new.id, 1, "created", now, created_data(new))
        results = [(new.id, True) for new in runs]
        tx: Tx | None = None
        try:
            async with self.db.statement() as tx:
                tx.notify(CHANNEL_WORK)
                shared = {
                    "queues": sorted({new.queue for new in runs}),
                    "events": to_json(events.rows).decode(),  # as batch rows are encoded
                    **tx.notifications_in_statement(),
                }
                [row] = await tx.fetch_batch("create_runs_at_once", rows, shared)
        except ConflictError:
            # Sent again after its connection broke: the ids are fresh, so they clash only
            # with the first sending's rows, whose reply was lost with the connection. The
            # statement is all or nothing: every run is there, each created once.
            if tx is None or not tx.replayed:
                raise
            if len(await self.get_runs([new.id for new in runs])) != len(runs):
                raise
            return results
        return results if int(row["inserted"]) == len(rows) else None

    # --- the worker's side -------------------------------------------------------------------

    async def claim_runs(
        self,
        worker_id: str,
        queues: Sequence[str],
        task_ids: Sequence[str],
        limit: int,
        lease: float,
        now: float,
    ) -> list[Run]:
        """Claim up to `limit` due runs, highest priority first, leased to `worker_id`."""
        if limit <= 0 or not queues or not task_ids:
            return []
        params: dict[str, Any] = {
            "worker_id": worker_id,
            "task_ids": list(task_ids),
            "limit": limit,
            "lease": lease,
            "now": now,
            "from_statuses": _CLAIM_SOURCES,
        }
        # The usual worker: one queue, last seen neither paused nor limited. Its claim goes
        # out with the settings lookup, one round trip for both; the statement itself claims
        # nothing if the queue has since been paused or limited.
        speculate = len(queues) == 1 and queues[0] not in self._gated_queues
        speculative = [
            ("find_queues", {"names": list(queues)}),
            ("claim_queue", {**params, "queue": queues[0]}),
        ]
        if speculate and self.db.writes_in_one_statement:
            # PostgreSQL's claim_queue appends the events itself: it is the whole claim and
            # commits by itself, one round trip without BEGIN/COMMIT. (A first batch found on
            # a broken pooled connection is replayed on another: it had not run.)
            async with self.db.statement(ordered_scans=True) as tx:
                found, claimed = await tx.fetch_each(speculative)
            _check_limit(claimed, limit)
            self._note_gates(queues, found)
            if claimed or not self._gated_queues.intersection(queues):
                return [row_to_run(row) for row in claimed]
            # Paused or limited since (claim_queue claimed nothing): the locked path below.
        events = EventLog()
        async with self.db.transaction() as tx:
            claimed = []
            if speculate and not self.db.writes_in_one_statement:
                found, claimed = await tx.fetch_each(speculative)
                _check_limit(claimed, limit)
                add_started_events(events, claimed, worker_id, now)
            else:
                found = await tx.fetchall("find_queues", {"names": list(queues)})
            settings = self._note_gates(queues, found)
            remaining: Sequence[str] = queues
            if speculate and not self._gated_queues.intersection(queues):
                settings, remaining = {}, ()  # claimed above: nothing more to do
            open_queues = [q for q in remaining if q not in settings]
            limited: list[QueueLimits] = []
            for limits in settings.values():
                if limits.paused:
                    continue
                if limits.limits_claims:
                    limited.append(limits)
                else:
                    open_queues.append(limits.name)
            rows: list[Row] = list(claimed)
            # Limited queues first, each taking what its own limits allow: claimed after the
            # open queues, they would get no slot while an open queue has a backlog.
            for limits in sorted(limited, key=lambda q: q.name):
                if len(rows) >= limit:
                    break
                taken = await self.claim_limited(
                    tx, worker_id, limits, task_ids, limit - len(rows), lease, now
                )
                add_started_events(events, taken, worker_id, now)
                rows += taken
            open_limit = limit - len(rows)
            if open_queues and open_limit > 0:
                params["limit"] = open_limit
                if len(open_queues) == 1:  # walks the claim index in order: no sort
                    opened = await tx.fetchall("claim_queue", {**params, "queue": open_queues[0]})
                    if not self.db.writes_in_one_statement:  # else it wrote its events
                        add_started_events(events, opened, worker_id, now)
                else:
                    opened = await tx.fetchall(
                        "claim_runs", {**params, "queues": sorted(open_queues)}
                    )
                    add_started_events(events, opened, worker_id, now)
                _check_limit(opened, open_limit)
                rows += opened
            await events.flush(tx)
        return [row_to_run(row) for row in rows]

    def _note_gates(self, queues: Sequence[str], found: list[Row]) -> dict[str, QueueLimits]:
        """Remember which of `queues` are paused or limited (their claims take the locked
        path); returns the settings found, by queue name."""
        settings = {row["name"]: row_to_queue(row) for row in found}
        self._gated_queues.difference_update(queues)
        self._gated_queues.update(
            name for name, lim in settings.items() if lim.paused or lim.limits_claims
        )
        return settings

    async def extend_leases(
        self, worker_id: str, attempts: Sequence[tuple[str, int]], lease: float, now: float
    ) -> set[str]:
        """Heartbeat: extend the leases this worker still holds; returns those run ids."""
        if not attempts:
            return set()
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "extend_leases",
                {
                    "worker_id": worker_id,
                    "lease": lease,
                    "now": now,
                    "attempts": [_attempt_key(r, a) for r, a in attempts],
                },
            )
        return {row["id"] for row in rows}

    async def owned_runs(self, worker_id: str, attempts: Sequence[tuple[str, int]]) -> set[str]:
        """Which of these attempts are still running under this worker's lease (a read)."""
        if not attempts:
            return set()
        async with self.db.reader() as tx:
            rows = await tx.fetchall(
                "owned_runs",
                {
                    "worker_id": worker_id,
                    "attempts": [_attempt_key(r, a) for r, a in attempts],
                },
            )
        return {row["id"] for row in rows}

    async def leased_runs(self, worker_id: str) -> list[tuple[str, int]]:
        """Every (run id, attempt) leased to this worker now (a read)."""
        async with self.db.reader() as tx:
            rows = await tx.fetchall("leased_runs", {"worker_id": worker_id})
        return [(row["id"], row["attempt"]) for row in rows]

    async def finish_attempts(
        self, worker_id: str, outcomes: Sequence[Outcome], now: float
    ) -> list[bool]:
        """Apply several attempts' outcomes in one transaction (group commit). Each is fenced
        on (run, attempt, lease owner, status running); `False` marks a stale outcome that
        changed nothing."""
        batch = OutcomeBatch(outcomes, now, events_in_sql=self.db.writes_in_one_statement)
        if not (self.db.writes_in_one_statement and all(map(ends_alone, outcomes))):
            return await self._finish_in_transaction(worker_id, batch, now)
        # PostgreSQL, nothing to settle or cancel: the statement is the whole commit, in
        # autocommit with its NOTIFY, one round trip. It applies only runs without a parent;
        # the rest (stale, or a child reported as a root) go through the transaction.
        async with self.db.statement(ordered_scans=True) as tx:
            notify_ends(tx, outcomes)
            notify = tx.notifications_in_statement()
            shared = batch.shared(worker_id, now, roots_only=True, notify=notify)
            returned = await tx.fetch_batch("finish_attempts", batch.rows, shared)
        applied = batch.applied({(row["id"], row["attempt"]) for row in returned})
        rest = [idx for idx, ok in enumerate(applied) if not ok]
        if rest:
            retried = OutcomeBatch([outcomes[i] for i in rest], now, events_in_sql=True)
            again = await self._finish_in_transaction(worker_id, retried, now)
            for idx, ok in zip(rest, again, strict=True):
                applied[idx] = ok
        return applied

    async def _finish_in_transaction(
        self, worker_id: str, batch: OutcomeBatch, now: float
    ) -> list[bool]:
        outcomes = batch.outcomes
        applied = [False] * len(outcomes)
        events = EventLog()
        settled: list[SettledChild] = []
        ended: list[Outcome] = []
        async with self.db.transaction() as tx:
            shared = batch.shared(worker_id, now)  # its NOTIFY goes with COMMIT
            returned = await tx.fetch_batch("finish_attempts", batch.rows, shared)
            changed = {(row["id"], row["attempt"]): row for row in returned}
            for idx in batch.order:
                out = outcomes[idx]
                row = changed.pop((out.run_id, out.attempt), None)
                if row is None:  # stale, or a repeat of an outcome just applied
                    continue
                applied[idx] = True
                ended.append(out)
                if out.status is not RunStatus.RETRYING and row["parent_id"] is not None:
                    settled.append(
                        settled_result(out.run_id, out.status, out.output_json, out.error)
                    )
                if not batch.events_in_sql:
                    new_events = batch.events[idx]
                    first = row["event_seq"] - len(new_events) + 1
                    for i, (type_, data) in enumerate(new_events):
                        events.add_json(out.run_id, first + i, type_, now, data)
            await events.flush(tx)
            if settled:
                await settle_child_waits(tx, settled, now)
            ended_badly = [out.run_id for out in ended if out.status in STOPS_SUBTREE]
            await cancel_descendants(tx, ended_badly, now, "the parent run ended without success")
            notify_ends(tx, ended)
        return applied

    async def release_runs(
        self, worker_id: str, attempts: Sequence[tuple[str, int]], now: float
    ) -> int:
        """Give leased runs back to the queue at once (graceful shutdown), fenced."""
        events = EventLog()
        # Run-id order: see finish_attempts. A repeated attempt is released once.
        rows = [
            {
                "id": run_id,
                "attempt": attempt,
                "status": RunStatus.QUEUED.value,
                "output": None,
                "error": None,
                "available_at": now,
                "finished_at": None,
                "n_events": 1,
                "failed": 0,
            }
            for run_id, attempt in sorted(set(attempts))
        ]

        def data(attempt: int) -> str:
            return dumps({"status": "queued", "attempt": attempt, "worker_id": worker_id})

        in_sql = self.db.writes_in_one_statement  # PostgreSQL's statement writes the events
        released_events = [
            (run_id, attempt, [("lease_released", data(attempt))])
            for run_id, attempt in sorted(set(attempts))
        ]
        shared = finish_params(worker_id, now, released_events if in_sql else None)
        async with self.db.transaction() as tx:
            returned = await tx.fetch_batch("finish_attempts", rows, shared)
            released = len(returned)
            for row in sorted(returned, key=lambda r: r["id"]):
                if not in_sql:
                    event = data(row["attempt"])
                    events.add_json(row["id"], row["event_seq"], "lease_released", now, event)
            await events.flush(tx)
            if released:
                tx.notify(CHANNEL_WORK)
        return released

    # --- from any process --------------------------------------------------------------------

    async def cancel_run(
        self, run_id: str, now: float, reason: str = "cancelled"
    ) -> tuple[Run | None, bool]:
        """Cancel a run that has not finished. Returns `(run, changed)`; `run` is None when no
        such run exists. A finished run is returned unchanged (exactly one terminal write)."""
        error = ErrorInfo(type="RunCancelledError", message=reason, retryable=False)
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "cancel_run",
                {
                    "id": run_id,
                    "now": now,
                    "error": dumps(error.to_json()),
                    "from_statuses": sources_of(RunStatus.CANCELLED),
                },
            )
            if row is None:
                current = await tx.fetchone("get_run", {"id": run_id})
                return (None if current is None else row_to_run(current)), False
            events = EventLog()
            events.add(
                run_id, row["event_seq"], "cancelled", now, status="cancelled", reason=reason
            )
            await events.flush(tx)
            if row["parent_id"] is not None:
                result = settled_result(run_id, RunStatus.CANCELLED, None, error)
                await settle_child_waits(tx, [result], now)
            await cancel_descendants(tx, [run_id], now, f"an ancestor run was cancelled: {reason}")
            tx.notify(CHANNEL_CANCEL, run_id)
            tx.notify(CHANNEL_FINISHED, run_id)
        return row_to_run(row), True

    async def recover_expired_leases(
        self, now: float, max_lost_leases: int, limit: int = 100
    ) -> list[Run]:
        """Runs whose worker stopped heartbeating go back to the queue through the normal
        claim path; after `max_lost_leases` losses the run fails instead (a dead letter)."""
        # Look before taking the write lock: idle workers sweep often and usually find nothing.
        async with self.db.reader() as tx:
            if not await tx.fetchall("select_expired_leases", {"now": now, "limit": 1}):
                return []
        recovered: list[str] = []
        events = EventLog()
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("select_expired_leases", {"now": now, "limit": limit})
            for row in rows:
                lost = row["lost_leases"] + 1
                give_up = lost >= max_lost_leases
                error = None
                if give_up:
                    error = ErrorInfo(
                        type=WorkerLostError.__name__,
                        message=(
                            f"worker lost {lost} times: the lease of run {row['id']!r} "
                            f"expired without a heartbeat (last worker "
                            f"{row['lease_owner']}, attempt {row['attempt']}); the run "
                            "is not retried again (engine option max_lost_leases)"
                        ),
                        retryable=False,
                    )
                n_events = 2 if give_up else 1
                updated = await tx.fetchone(
                    "recover_lease",
                    {
                        "id": row["id"],
                        "attempt": row["attempt"],
                        "worker_id": row["lease_owner"],
                        "status": (RunStatus.FAILED if give_up else RunStatus.QUEUED).value,
                        "error": None if error is None else dumps(error.to_json()),
                        "available_at": None if give_up else now,
                        "finished_at": now if give_up else None,
                        "now": now,
                        "n_events": n_events,
                    },
                )
                if updated is None:
                    continue
                recovered.append(row["id"])
                seq = updated["event_seq"] - n_events + 1
                events.add(
                    row["id"],
                    seq,
                    "lease_lost",
                    now,
                    status="failed" if give_up else "queued",
                    attempt=row["attempt"],
                    worker_id=row["lease_owner"],
                    lost_leases=lost,
                )
                if error is not None:
                    events.add(
                        row["id"], seq + 1, "failed", now, status="failed", error=error.to_json()
                    )
                    tx.notify(CHANNEL_FINISHED, row["id"])
                    if updated["parent_id"] is not None:
                        result = settled_result(row["id"], RunStatus.FAILED, None, error)
                        await settle_child_waits(tx, [result], now)
                    await cancel_descendants(
                        tx, [row["id"]], now, "the parent run failed: its worker was lost"
                    )
            await events.flush(tx)
            if recovered:
                tx.notify(CHANNEL_WORK)
            fresh = await tx.fetchall("get_runs", {"ids": recovered}) if recovered else []
        return [row_to_run(r) for r in fresh]

    async def expire_runs(self, now: float, limit: int = 100) -> list[str]:
        """Runs whose TTL passed before they started become `expired`."""
        expired: list[str] = []
        events = EventLog()
        error = ErrorInfo(
            type="RunExpiredError",
            retryable=False,
            message="the run's ttl passed before any worker started it",
        )
        async with self.db.reader() as tx:
            if not await tx.fetchall("select_expired_ttl", {"now": now, "limit": 1}):
                return []
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("select_expired_ttl", {"now": now, "limit": limit})
            for row in rows:
                updated = await tx.fetchone(
                    "expire_run",
                    {
                        "id": row["id"],
                        "now": now,
                        "error": dumps(error.to_json()),
                        "from_statuses": sources_of(RunStatus.EXPIRED),
                    },
                )
                if updated is None:
                    continue
                expired.append(row["id"])
                events.add(
                    row["id"],
                    updated["event_seq"],
                    "expired",
                    now,
                    status="expired",
                    reason="ttl passed before the run started",
                )
                tx.notify(CHANNEL_FINISHED, row["id"])
                if updated["parent_id"] is not None:
                    result = settled_result(row["id"], RunStatus.EXPIRED, None, error)
                    await settle_child_waits(tx, [result], now)
            await events.flush(tx)
        return expired

    # --- reads -------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        async with self.db.reader() as tx:
            row = await tx.fetchone("get_run", {"id": run_id})
        return None if row is None else row_to_run(row)

    async def get_runs(self, run_ids: Sequence[str]) -> list[Run]:
        if not run_ids:
            return []
        async with self.db.reader() as tx:
            rows = await tx.fetchall("get_runs", {"ids": list(run_ids)})
        by_id = {row["id"]: row_to_run(row) for row in rows}
        return [by_id[i] for i in run_ids if i in by_id]

    async def finished_runs(
        self, run_ids: Sequence[str], *, known: bool = False
    ) -> dict[str, Run | None]:
        """Every run of `run_ids` that exists: its snapshot if it has finished, else None.
        `known`: the runs are known to exist, and only the finished ones are read and
        returned (waiters polling many runs read only the few that finished)."""
        if not run_ids:
            return {}
        async with self.db.reader() as tx:
            if known:
                params = {"ids": list(run_ids), "statuses": _TERMINAL}
                return {
                    row["id"]: row_to_run(row)
                    for row in await tx.fetchall("get_finished_runs", params)
                }
            rows = await tx.fetchall("get_runs", {"ids": list(run_ids)})
        return {
            row["id"]: row_to_run(row) if row["status"] in TERMINAL_STATUSES else None
            for row in rows
        }

    async def list_runs(
        self,
        *,
        status: str | None = None,
        task_id: str | None = None,
        queue: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Newest first. `cursor` is the `next_cursor` of the previous page (a run id)."""
        async with self.db.reader() as tx:
            rows = await tx.fetchall(
                "list_runs",
                {
                    "status": status,
                    "task_id": task_id,
                    "queue": queue,
                    "parent_id": parent_id,
                    "cursor": cursor,
                    "limit": limit + 1,
                },
            )
        runs = [row_to_run(row) for row in rows[:limit]]
        next_cursor = runs[-1].id if len(rows) > limit and runs else None
        return RunPage(runs=runs, next_cursor=next_cursor)

    async def get_events(
        self, run_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[RunEvent]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall(
                "get_events", {"run_id": run_id, "after_seq": after_seq, "limit": limit}
            )
        return [row_to_event(row) for row in rows]

    async def count_by_status(self) -> dict[str, int]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall("count_runs_by_status", {})
        return {row["status"]: row["n"] for row in rows}

    # --- task catalog ------------------------------------------------------------------------

    async def register_tasks(self, tasks: Sequence[TaskInfo], now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.executemany(
                "upsert_task",
                [
                    {
                        "task_id": t.task_id,
                        "queue": t.queue,
                        "max_attempts": t.max_attempts,
                        "timeout": t.timeout,
                        "version": t.version,
                        "input_schema": None if t.input_schema is None else dumps(t.input_schema),
                        "output_schema": None
                        if t.output_schema is None
                        else dumps(t.output_schema),
                        "now": now,
                    }
                    for t in tasks
                ],
            )

    async def get_task(self, task_id: str) -> TaskInfo | None:
        async with self.db.reader() as tx:
            row = await tx.fetchone("get_task", {"task_id": task_id})
        return None if row is None else row_to_task(row)

    async def list_tasks(self) -> list[TaskInfo]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall("list_tasks", {})
        return [row_to_task(row) for row in rows]


def _check_limit(rows: list[Row], limit: int) -> None:
    # Guard against a planner re-evaluating LIMIT: never hand out more than asked.
    if len(rows) > limit:
        raise StorageError(f"claim returned {len(rows)} rows for a limit of {limit}")
