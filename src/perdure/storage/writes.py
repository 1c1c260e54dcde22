"""Write helpers shared by every storage aggregate: insert parameters of a run and the events
one transaction appends."""

from __future__ import annotations

from typing import Any

from perdure.core.models import NewRun
from perdure.core.statuses import RunStatus
from perdure.storage.database import Row, Tx
from perdure.storage.rows import dumps


class EventLog:
    """Collects the events of one transaction and inserts them in one batch statement."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, run_id: str, seq: int, type_: str, at: float, **data: Any) -> None:
        self.add_json(run_id, seq, type_, at, dumps(data))

    def add_json(self, run_id: str, seq: int, type_: str, at: float, data_json: str) -> None:
        """`add` with the data already serialized (shared by many events of a batch)."""
        self.rows.append({"run_id": run_id, "seq": seq, "type": type_, "at": at, "data": data_json})

    async def flush(self, tx: Tx) -> None:
        # Nothing reads the result: on PostgreSQL it travels with the next statement or COMMIT.
        await tx.defer_batch("insert_events", self.rows)
        self.rows = []


def run_insert_params(new: NewRun, now: float) -> dict[str, Any]:
    """Parameters of `insert_run` for a new run."""
    return {
        "id": new.id,
        "task_id": new.task_id,
        "queue": new.queue,
        "status": new.status.value,
        "priority": new.priority,
        "input": new.input_json,
        "max_attempts": new.max_attempts,
        "timeout": new.timeout,
        "version": new.version,
        "available_at": new.available_at,
        "expires_at": new.expires_at,
        "idempotency_key": new.idempotency_key,
        "idempotency_expires_at": new.idempotency_expires_at,
        "concurrency_key": new.concurrency_key,
        "tags": dumps(new.tags) if new.tags else "[]",
        "metadata": dumps(new.metadata) if new.metadata else "{}",
        "parent_id": new.parent_id,
        "root_id": new.root_id or new.id,
        "now": now,
    }


class CreatedData:
    """The data of new runs' `created` events, serialized once per kind of run."""

    def __init__(self) -> None:
        self._by_kind: dict[tuple[str, str, float | None], str] = {}

    def __call__(self, new: NewRun) -> str:
        delayed = new.status is RunStatus.DELAYED
        kind = (new.status.value, new.queue, new.available_at if delayed else None)
        found = self._by_kind.get(kind)
        if found is None:
            data: dict[str, Any] = {"status": new.status.value, "queue": new.queue}
            if delayed:
                data["available_at"] = new.available_at
            found = self._by_kind[kind] = dumps(data)
        return found


def add_started_events(events: EventLog, rows: list[Row], worker_id: str, now: float) -> None:
    """The `attempt_started` events of claimed runs, their JSON made directly (the text
    PostgreSQL's claim_queue writes itself)."""
    tail = f',"worker_id":{dumps(worker_id)}}}'
    for row in rows:
        data = f'{{"status":"running","attempt":{int(row["attempt"])}{tail}'
        events.add_json(row["id"], row["event_seq"], "attempt_started", now, data)
