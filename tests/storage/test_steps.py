"""Recording durable calls: fenced on the attempt's lease, atomic with their events, and
group-committed across attempts without one attempt's failure touching another's records."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from perdure.core.errors import DuplicateRunError
from perdure.core.models import Run, StepRecord
from perdure.storage import Storage
from perdure.storage.database import ConflictError
from perdure.storage.steps import Fence
from tests.storage.factories import LEASE, T0, claim, claim_one, create, create_one, new_run

pytestmark = pytest.mark.timeout(30)


def step(run: Run, position: int, name: str | None = None, **fields: Any) -> StepRecord:
    return StepRecord(
        run_id=run.id,
        position=position,
        kind="step",
        name=name or f"s{position}",
        status="completed",
        attempt=run.attempt,
        **fields,
    )


async def recorded_events(storage: Storage, run_id: str) -> list[tuple[int, str, object]]:
    return [
        (e.seq, e.type, e.data.get("position"))
        for e in await storage.get_events(run_id)
        if e.type.endswith("_recorded")
    ]


async def test_a_stale_workers_step_record_is_rejected(storage: Storage) -> None:
    await create_one(storage)
    stale = await claim_one(storage, "w1")
    now = T0 + LEASE + 1
    [_] = await storage.recover_expired_leases(now, max_lost_leases=3)
    current = await claim_one(storage, "w2", now=now)
    assert current.attempt == stale.attempt + 1

    late = await storage.record_steps(
        Fence(stale.id, stale.attempt, "w1"), [step(stale, 0, output={"from": "w1"})], now
    )
    kept = await storage.record_steps(
        Fence(current.id, current.attempt, "w2"), [step(current, 0, output={"from": "w2"})], now
    )

    assert (late, kept) == (False, True)
    [stored] = await storage.load_steps(current.id)
    assert (stored.output, stored.attempt) == ({"from": "w2"}, current.attempt)
    # created, attempt_started, lease_lost, attempt_started, then the one record
    assert await recorded_events(storage, current.id) == [(5, "step_recorded", 0)]


async def test_a_worker_that_lost_the_run_cannot_record_even_at_a_new_position(
    storage: Storage,
) -> None:
    await create_one(storage)
    stale = await claim_one(storage, "w1")
    now = T0 + LEASE + 1
    await storage.recover_expired_leases(now, max_lost_leases=3)  # queued again, not claimed

    assert not await storage.record_steps(
        Fence(stale.id, stale.attempt, "w1"), [step(stale, 0)], now
    )
    assert await storage.load_steps(stale.id) == []
    assert await recorded_events(storage, stale.id) == []


async def test_concurrent_records_of_many_attempts_are_each_fenced(storage: Storage) -> None:
    await create(storage, *[new_run() for _ in range(6)])
    runs = await claim(storage, "w1", limit=6)
    lost = runs[3]
    # Another worker holds attempt 2 of `lost` now; w1 still writes with attempt 1.
    await storage.record_steps(Fence(lost.id, lost.attempt, "w1"), [step(lost, 0)], T0)
    fences = [Fence(r.id, r.attempt, "w1") for r in runs]
    fences[3] = Fence(lost.id, lost.attempt, "w2")

    results = await asyncio.gather(
        *[storage.record_steps(f, [step(r, 1)], T0 + 1) for f, r in zip(fences, runs, strict=True)]
    )

    assert results == [True, True, True, False, True, True]
    for run in runs:
        positions = [s.position for s in await storage.load_steps(run.id)]
        assert positions == ([0] if run is lost else [1])


async def test_concurrent_steps_of_one_attempt_get_contiguous_events(storage: Storage) -> None:
    run = (await create(storage, new_run()))[0]
    run = await claim_one(storage, "w1")
    fence = Fence(run.id, run.attempt, "w1")

    results = await asyncio.gather(
        *[storage.record_steps(fence, [step(run, p)], T0) for p in range(8)]
    )

    assert results == [True] * 8
    assert [s.position for s in await storage.load_steps(run.id)] == list(range(8))
    events = await recorded_events(storage, run.id)
    assert [seq for seq, _, _ in events] == list(range(3, 11))
    assert sorted(position for _, _, position in events) == list(range(8))  # type: ignore[type-var]


async def test_a_taken_position_stores_nothing_and_spares_other_runs(storage: Storage) -> None:
    await create(storage, *[new_run() for _ in range(3)])
    runs = await claim(storage, "w1", limit=3)
    fences = [Fence(r.id, r.attempt, "w1") for r in runs]
    assert await storage.record_steps(fences[1], [step(runs[1], 0, "first")], T0)

    results = await asyncio.gather(
        *[
            storage.record_steps(f, [step(r, 0, "again")], T0 + 1)
            for f, r in zip(fences, runs, strict=True)
        ],
        return_exceptions=True,
    )

    assert results[0] is True
    assert results[2] is True
    assert isinstance(results[1], Exception)
    [kept] = await storage.load_steps(runs[1].id)
    assert kept.name == "first"
    assert await recorded_events(storage, runs[1].id) == [(3, "step_recorded", 0)]
    # The failed write reserved no event numbers: the next record continues the sequence.
    assert await storage.record_steps(fences[1], [step(runs[1], 1)], T0 + 2)
    assert [seq for seq, _, _ in await recorded_events(storage, runs[1].id)] == [3, 4]


async def test_a_token_id_taken_by_another_run_is_refused(storage: Storage) -> None:
    await create(storage, new_run(), new_run())
    first, second = await claim(storage, "w1", limit=2)
    token: dict[str, Any] = {
        "kind": "token",
        "name": "token",
        "status": "pending",
        "token_id": "tok_same",
    }
    assert await storage.record_steps(
        Fence(first.id, first.attempt, "w1"),
        [StepRecord(run_id=first.id, position=0, attempt=first.attempt, **token)],
        T0,
    )

    with pytest.raises(DuplicateRunError, match="tok_same"):
        await storage.record_steps(
            Fence(second.id, second.attempt, "w1"),
            [StepRecord(run_id=second.id, position=0, attempt=second.attempt, **token)],
            T0,
        )

    assert await storage.load_steps(second.id) == []
    assert await recorded_events(storage, second.id) == []


async def test_progress_batched_with_another_runs_refused_record_is_still_written(
    storage: Storage,
) -> None:
    # On PostgreSQL, writes that arrive while one is under way go out together in one
    # statement; another run's conflict aborts that statement, not these events.
    await create(storage, *[new_run() for _ in range(3)])
    busy, taker, chatty = await claim(storage, "w1", limit=3)
    fence = {run.id: Fence(run.id, run.attempt, "w1") for run in (busy, taker, chatty)}
    assert await storage.record_steps(fence[busy.id], [step(busy, 0, "first")], T0)

    results = await asyncio.gather(
        storage.record_steps(fence[busy.id], [step(busy, 1)], T0 + 1),  # written at once
        storage.record_steps(fence[taker.id], [step(taker, 0)], T0 + 1),  # these two wait
        storage.record_steps(fence[busy.id], [step(busy, 0, "again")], T0 + 1),  # refused
        storage.append_events(fence[chatty.id], [("progress", {"data": 50})], T0 + 1),
        return_exceptions=True,
    )

    assert results[:2] == [True, True]
    assert isinstance(results[2], ConflictError)
    assert results[3] is True
    [progress] = [e for e in await storage.get_events(chatty.id) if e.type == "progress"]
    assert progress.data == {"data": 50}


async def test_recording_the_same_record_again_is_idempotent(storage: Storage) -> None:
    """What a write retried after its connection broke sees if the first one had committed."""
    run = (await create(storage, new_run()))[0]
    run = await claim_one(storage, "w1")
    fence = Fence(run.id, run.attempt, "w1")
    record = step(run, 0, output={"n": 1})
    assert await storage.record_steps(fence, [record], T0)

    assert await storage.record_steps(fence, [record], T0 + 1)
    with pytest.raises(Exception):  # noqa: B017 - a different record: the position is taken
        await storage.record_steps(fence, [step(run, 0, output={"n": 2})], T0 + 1)

    assert await storage.load_steps(run.id) == [record]
    assert await recorded_events(storage, run.id) == [(3, "step_recorded", 0)]


async def test_a_write_on_connections_the_server_dropped_is_retried(
    storage: Storage, backend: str, backend_url: str
) -> None:
    if backend != "postgres":
        pytest.skip("only PostgreSQL has pooled connections the server can drop")
    await create(storage, new_run())
    run = await claim_one(storage, "w1")
    async with await psycopg.AsyncConnection.connect(backend_url, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    assert await storage.record_steps(Fence(run.id, run.attempt, "w1"), [step(run, 0)], T0)

    assert [s.position for s in await storage.load_steps(run.id)] == [0]
    assert await recorded_events(storage, run.id) == [(3, "step_recorded", 0)]


async def test_progress_events_are_fenced_and_share_the_sequence_with_records(
    storage: Storage,
) -> None:
    run = (await create(storage, new_run()))[0]
    run = await claim_one(storage, "w1")
    fence = Fence(run.id, run.attempt, "w1")
    progress = [("progress", {"data": 1}), ("log", {"level": "INFO", "message": "hi"})]

    results = await asyncio.gather(
        storage.record_steps(fence, [step(run, 0)], T0),
        storage.append_events(fence, progress, T0),
        storage.record_steps(fence, [step(run, 1)], T0),
    )
    stale = await storage.append_events(Fence(run.id, run.attempt, "w2"), progress, T0)

    assert results == [True, True, True]
    assert stale is False
    events = await storage.get_events(run.id)
    assert [e.seq for e in events] == list(range(1, 7))
    assert sorted(e.type for e in events[2:]) == [
        "log",
        "progress",
        "step_recorded",
        "step_recorded",
    ]
    assert next(e.data for e in events if e.type == "progress") == {"data": 1}
