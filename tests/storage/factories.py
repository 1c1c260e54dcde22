"""Builders for the storage conformance tests. Times are fixed epoch seconds, never sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from perdure.core.errors import ErrorInfo
from perdure.core.ids import run_id
from perdure.core.models import NewRun, Outcome, Run
from perdure.core.statuses import RunStatus
from perdure.storage import Storage, make_storage
from perdure.storage.postgres import PostgresTx

T0 = 1_700_000_000.0
LEASE = 30.0


@asynccontextmanager
async def open_storage(url: str) -> AsyncIterator[Storage]:
    storage = make_storage(url)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


_seq = 0


def new_run(
    *,
    task_id: str = "task",
    queue: str = "default",
    status: RunStatus = RunStatus.QUEUED,
    available_at: float = T0,
    created: float = T0,
    priority: int = 0,
    max_attempts: int = 3,
    input_json: str = '{"x":1}',
    **options: Any,
) -> NewRun:
    """A run to insert; ids grow with each call so they sort in creation order."""
    global _seq
    _seq += 1
    return NewRun(
        id=options.pop("id", None) or run_id(created + _seq / 1000),
        task_id=task_id,
        queue=queue,
        input_json=input_json,
        status=status,
        available_at=available_at,
        max_attempts=max_attempts,
        priority=priority,
        **options,
    )


async def create(storage: Storage, *runs: NewRun, now: float = T0) -> list[Run]:
    results = await storage.create_runs(runs or [new_run()], now)
    assert all(created for _, created in results)
    return await storage.get_runs([run_id for run_id, _ in results])


async def create_one(storage: Storage, now: float = T0, **options: Any) -> Run:
    (run,) = await create(storage, new_run(**options), now=now)
    return run


async def claim(
    storage: Storage,
    worker: str = "w1",
    *,
    now: float = T0,
    limit: int = 10,
    queues: Sequence[str] = ("default",),
    task_ids: Sequence[str] = ("task",),
    lease: float = LEASE,
) -> list[Run]:
    return await storage.claim_runs(worker, queues, task_ids, limit, lease, now)


async def claim_one(storage: Storage, worker: str = "w1", *, now: float = T0) -> Run:
    runs = await claim(storage, worker, now=now, limit=1)
    assert len(runs) == 1, f"expected one claimable run at {now}, got {runs}"
    return runs[0]


def completed(run: Run, output: str = '{"ok":true}') -> Outcome:
    return Outcome(run.id, run.attempt, RunStatus.COMPLETED, output_json=output)


def failed(run: Run, message: str = "boom", *, retry_at: float | None = None) -> Outcome:
    status = RunStatus.FAILED if retry_at is None else RunStatus.RETRYING
    error = ErrorInfo(type="ValueError", message=message, retryable=retry_at is not None)
    return Outcome(run.id, run.attempt, status, error=error, retry_at=retry_at)


async def get(storage: Storage, run_id_: str) -> Run:
    run = await storage.get_run(run_id_)
    assert run is not None, f"run {run_id_} not found"
    return run


async def event_types(storage: Storage, run_id_: str) -> list[str]:
    return [event.type for event in await storage.get_events(run_id_)]


Statement = tuple[str, Any, Any]


def lose_first_reply(monkeypatch: pytest.MonkeyPatch, query: str) -> Callable[[], int]:
    """The first batch holding `query` runs, and then its connection dies before the reply
    (the server ends the session, as in a restart): the write is committed, the caller does
    not know. Returns a counter of the batches holding `query` that were sent."""
    sent = 0
    execute = PostgresTx._execute  # pyright: ignore[reportPrivateUsage]

    async def losing(conn: Any, batch: Sequence[Statement]) -> Any:
        nonlocal sent
        ours = any(name == query for name, _, _ in batch)
        sent += ours
        cursors = await execute(conn, batch)
        if ours and sent == 1:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return cursors

    monkeypatch.setattr(PostgresTx, "_execute", staticmethod(losing))
    return lambda: sent
