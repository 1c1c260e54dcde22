"""Finishing attempts (fenced), retries, heartbeats, lost leases and releases."""

from __future__ import annotations

import pytest

from perdure.core.clock import to_datetime
from perdure.core.errors import StorageError
from perdure.core.models import Outcome
from perdure.core.statuses import RunStatus
from perdure.storage import Storage
from tests.storage.factories import (
    LEASE,
    T0,
    claim,
    claim_one,
    completed,
    create,
    create_one,
    event_types,
    failed,
    get,
    new_run,
)


async def test_finish_completes_the_run(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    assert await storage.finish_attempts("w1", [completed(run, '{"n":3}')], T0 + 4) == [True]

    stored = await get(storage, run.id)
    assert stored.status is RunStatus.COMPLETED
    assert stored.output == {"n": 3}
    assert stored.finished_at == stored.updated_at == to_datetime(T0 + 4)
    assert stored.lease_owner is None
    assert stored.lease_expires_at is None
    assert stored.available_at is None
    events = await storage.get_events(run.id)
    assert [e.type for e in events] == ["created", "attempt_started", "completed"]
    assert events[-1].data == {"status": "completed", "attempt": 1}


async def test_finish_by_a_stale_worker_changes_nothing(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage, "w1")
    before = await get(storage, run.id)

    assert await storage.finish_attempts("w2", [completed(run)], T0 + 1) == [False]
    stale_attempt = Outcome(run.id, run.attempt + 1, RunStatus.COMPLETED, output_json="1")
    assert await storage.finish_attempts("w1", [stale_attempt], T0 + 1) == [False]

    assert await get(storage, run.id) == before
    assert await event_types(storage, run.id) == ["created", "attempt_started"]


async def test_an_attempt_finishes_once(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    await storage.finish_attempts("w1", [completed(run, "1")], T0 + 1)

    assert await storage.finish_attempts("w1", [failed(run)], T0 + 2) == [False]

    stored = await get(storage, run.id)
    assert (stored.status, stored.output, stored.error) == (RunStatus.COMPLETED, 1, None)


async def test_finishing_a_cancelled_run_changes_nothing(storage: Storage) -> None:
    """The transition table holds in SQL: a cancelled run never becomes completed."""
    await create_one(storage)
    run = await claim_one(storage)
    await storage.cancel_run(run.id, T0 + 1)

    assert await storage.finish_attempts("w1", [completed(run)], T0 + 2) == [False]

    stored = await get(storage, run.id)
    assert stored.status is RunStatus.CANCELLED
    assert stored.output is None
    assert await event_types(storage, run.id) == ["created", "attempt_started", "cancelled"]


async def test_an_attempt_cannot_end_in_a_status_the_table_forbids(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    with pytest.raises(StorageError, match="expired"):
        await storage.finish_attempts("w1", [Outcome(run.id, 1, RunStatus.EXPIRED)], T0)

    assert (await get(storage, run.id)).status is RunStatus.RUNNING


async def test_a_failure_is_stored_with_its_error(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    await storage.finish_attempts("w1", [failed(run, "bad input")], T0 + 1)

    stored = await get(storage, run.id)
    assert stored.status is RunStatus.FAILED
    assert stored.error is not None
    assert (stored.error.type, stored.error.message) == ("ValueError", "bad input")
    types = await event_types(storage, run.id)
    assert types == ["created", "attempt_started", "attempt_failed", "failed"]


async def test_retry_schedules_the_next_attempt(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    await storage.finish_attempts("w1", [failed(run, "flaky", retry_at=T0 + 5)], T0 + 1)

    stored = await get(storage, run.id)
    assert stored.status is RunStatus.RETRYING
    assert stored.available_at == to_datetime(T0 + 5)
    assert stored.finished_at is None
    assert stored.error is not None
    assert stored.error.message == "flaky"
    events = await storage.get_events(run.id)
    assert [e.type for e in events[2:]] == ["attempt_failed", "retry_scheduled"]
    assert events[3].data == {"status": "retrying", "attempt": 2, "retry_at": T0 + 5}
    assert await claim(storage, now=T0 + 4) == []
    again = await claim_one(storage, "w2", now=T0 + 5)
    assert (again.id, again.attempt, again.lease_owner) == (run.id, 2, "w2")
    assert again.started_at == to_datetime(T0)  # the first start is kept


async def test_group_finish_reports_each_outcome_in_order(storage: Storage) -> None:
    await create(storage, new_run(), new_run(), new_run())
    a, b, c = sorted(await claim(storage, limit=3), key=lambda r: r.id)
    stale = Outcome(b.id, b.attempt + 7, RunStatus.COMPLETED)

    applied = await storage.finish_attempts("w1", [completed(c), stale, failed(a)], T0 + 1)

    assert applied == [True, False, True]
    statuses = [(await get(storage, r.id)).status for r in (a, b, c)]
    assert statuses == [RunStatus.FAILED, RunStatus.RUNNING, RunStatus.COMPLETED]


async def test_extend_leases_only_for_attempts_the_worker_owns(storage: Storage) -> None:
    await create(storage, *(new_run() for _ in range(3)))
    mine = await claim(storage, "w1", limit=2)
    [theirs] = await claim(storage, "w2", limit=1)
    wanted = [(r.id, r.attempt) for r in mine] + [(theirs.id, 1), (mine[0].id, 99)]

    extended = await storage.extend_leases("w1", wanted, LEASE, T0 + 20)

    assert extended == {r.id for r in mine}
    for run in mine:
        assert (await get(storage, run.id)).lease_expires_at == to_datetime(T0 + 20 + LEASE)
    assert (await get(storage, theirs.id)).lease_expires_at == to_datetime(T0 + LEASE)
    assert await storage.owned_runs("w1", wanted) == {r.id for r in mine}
    assert await storage.owned_runs("w2", wanted) == {theirs.id}
    assert await storage.extend_leases("w1", [], LEASE, T0) == set()
    assert await storage.owned_runs("w1", []) == set()


async def test_a_finished_attempt_is_not_extended(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    await storage.finish_attempts("w1", [completed(run)], T0 + 1)

    assert await storage.extend_leases("w1", [(run.id, 1)], LEASE, T0 + 2) == set()
    assert await storage.owned_runs("w1", [(run.id, 1)]) == set()


async def test_an_expired_lease_goes_back_to_the_queue(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    assert await storage.recover_expired_leases(T0 + LEASE - 1, max_lost_leases=3) == []
    [recovered] = await storage.recover_expired_leases(T0 + LEASE + 1, max_lost_leases=3)

    assert recovered == await get(storage, run.id)
    assert recovered.status is RunStatus.QUEUED
    assert recovered.lost_leases == 1
    assert recovered.available_at == to_datetime(T0 + LEASE + 1)
    assert recovered.lease_owner is None
    assert recovered.lease_expires_at is None
    events = await storage.get_events(run.id)
    assert events[-1].type == "lease_lost"
    assert events[-1].data == {
        "status": "queued",
        "attempt": 1,
        "worker_id": "w1",
        "lost_leases": 1,
    }
    again = await claim_one(storage, "w2", now=T0 + LEASE + 1)
    assert again.attempt == 2


async def test_a_heartbeat_keeps_the_lease(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    await storage.extend_leases("w1", [(run.id, 1)], LEASE, T0 + 20)

    assert await storage.recover_expired_leases(T0 + LEASE + 1, max_lost_leases=3) == []
    assert (await get(storage, run.id)).status is RunStatus.RUNNING


async def test_a_run_fails_after_losing_its_lease_max_times(storage: Storage) -> None:
    await create_one(storage)
    now = T0
    for _ in range(3):
        await claim_one(storage, "w1", now=now)
        now += LEASE + 1
        [recovered] = await storage.recover_expired_leases(now, max_lost_leases=3)

    stored = await get(storage, recovered.id)
    assert stored == recovered
    assert stored.status is RunStatus.FAILED
    assert stored.lost_leases == 3
    assert stored.finished_at == to_datetime(now)
    assert stored.error is not None
    assert stored.error.message.startswith("worker lost 3 times")
    assert not stored.error.retryable
    assert (await event_types(storage, stored.id))[-2:] == ["lease_lost", "failed"]
    assert await claim(storage, now=now + 100) == []


async def test_a_late_finish_after_recovery_changes_nothing(storage: Storage) -> None:
    await create_one(storage)
    first = await claim_one(storage, "w1")
    await storage.recover_expired_leases(T0 + LEASE + 1, max_lost_leases=3)
    second = await claim_one(storage, "w2", now=T0 + LEASE + 2)

    assert await storage.finish_attempts("w1", [completed(first)], T0 + LEASE + 3) == [False]

    stored = await get(storage, first.id)
    assert (stored.status, stored.attempt, stored.lease_owner) == (RunStatus.RUNNING, 2, "w2")
    assert await storage.finish_attempts("w2", [completed(second)], T0 + LEASE + 4) == [True]


async def test_recover_respects_the_limit(storage: Storage) -> None:
    await create(storage, *(new_run() for _ in range(3)))
    await claim(storage, limit=3)

    assert len(await storage.recover_expired_leases(T0 + 99, 3, limit=2)) == 2
    assert len(await storage.recover_expired_leases(T0 + 99, 3, limit=2)) == 1


async def test_release_runs_gives_them_back_to_the_queue(storage: Storage) -> None:
    await create(storage, new_run(), new_run())
    runs = await claim(storage, "w1")
    attempts = [(r.id, r.attempt) for r in runs]

    assert await storage.release_runs("w2", attempts, T0 + 3) == 0
    assert await storage.release_runs("w1", attempts, T0 + 3) == 2

    for run in runs:
        stored = await get(storage, run.id)
        assert stored.status is RunStatus.QUEUED
        assert stored.available_at == to_datetime(T0 + 3)
        assert stored.lease_owner is None
        assert (await event_types(storage, run.id))[-1] == "lease_released"
    assert await storage.release_runs("w1", attempts, T0 + 4) == 0
    assert len(await claim(storage, "w3", now=T0 + 3)) == 2
