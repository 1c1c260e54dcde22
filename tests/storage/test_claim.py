"""Claiming due runs: filters, order, limit, delay, TTL, and concurrent claimers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack

from perdure.core.clock import to_datetime
from perdure.core.limits import QueueLimits
from perdure.core.statuses import RunStatus
from perdure.storage import Storage
from tests.storage.factories import LEASE, T0, claim, create, create_one, get, new_run


async def test_claim_leases_the_run_and_records_the_attempt(storage: Storage) -> None:
    run = await create_one(storage)

    [claimed] = await claim(storage, "worker-a", now=T0 + 2)

    stored = await get(storage, run.id)
    assert claimed == stored
    assert stored.status is RunStatus.RUNNING
    assert stored.attempt == 1
    assert stored.lease_owner == "worker-a"
    assert stored.lease_expires_at == to_datetime(T0 + 2 + LEASE)
    assert stored.started_at == stored.updated_at == to_datetime(T0 + 2)
    assert stored.available_at is None
    events = await storage.get_events(run.id)
    assert [(e.seq, e.type) for e in events] == [(1, "created"), (2, "attempt_started")]
    assert events[1].data == {"status": "running", "attempt": 1, "worker_id": "worker-a"}
    assert events[1].at == to_datetime(T0 + 2)


async def test_a_claimed_run_is_not_claimed_again(storage: Storage) -> None:
    await create_one(storage)
    await claim(storage, "w1")

    assert await claim(storage, "w2", now=T0 + 1) == []


async def test_claim_only_from_the_given_queues(storage: Storage) -> None:
    a = await create_one(storage, queue="a")
    b = await create_one(storage, queue="b")
    await create_one(storage, queue="c")

    claimed = await claim(storage, queues=["a", "b"])

    assert {r.id for r in claimed} == {a.id, b.id}
    assert await storage.count_by_status() == {"running": 2, "queued": 1}


async def test_claim_only_the_given_tasks(storage: Storage) -> None:
    known = await create_one(storage, task_id="known")
    await create_one(storage, task_id="unknown")

    claimed = await claim(storage, task_ids=["known", "other"])

    assert [r.id for r in claimed] == [known.id]


async def test_claim_nothing_without_queues_tasks_or_slots(storage: Storage) -> None:
    await create_one(storage)

    assert await claim(storage, queues=[]) == []
    assert await claim(storage, task_ids=[]) == []
    assert await claim(storage, limit=0) == []
    assert await storage.count_by_status() == {"queued": 1}


async def test_claim_highest_priority_first_then_oldest(storage: Storage) -> None:
    low = await create_one(storage, priority=0, available_at=T0 - 30)
    high_late = await create_one(storage, priority=10, available_at=T0 - 10)
    high_early = await create_one(storage, priority=10, available_at=T0 - 20)
    mid = await create_one(storage, priority=5, available_at=T0)
    tie = await create_one(storage, priority=5, available_at=T0)  # same time: id order

    order = [(await claim(storage, limit=1))[0].id for _ in range(5)]

    assert order == [high_early.id, high_late.id, mid.id, tie.id, low.id]


async def test_claim_respects_the_limit(storage: Storage) -> None:
    await create(storage, *(new_run() for _ in range(5)))

    sizes = [len(await claim(storage, limit=2)) for _ in range(4)]

    assert sizes == [2, 2, 1, 0]


async def test_a_delayed_run_is_not_claimed_before_it_is_due(storage: Storage) -> None:
    run = await create_one(storage, status=RunStatus.DELAYED, available_at=T0 + 60)

    assert await claim(storage, now=T0 + 59.9) == []
    [claimed] = await claim(storage, now=T0 + 60)
    assert claimed.id == run.id
    assert claimed.status is RunStatus.RUNNING


async def test_a_run_past_its_ttl_is_not_claimed(storage: Storage) -> None:
    await create_one(storage, expires_at=T0 + 10)

    assert await claim(storage, now=T0 + 10) == []
    assert await storage.count_by_status() == {"queued": 1}


async def test_a_run_within_its_ttl_is_claimed(storage: Storage) -> None:
    run = await create_one(storage, expires_at=T0 + 10)

    assert [r.id for r in await claim(storage, now=T0 + 9)] == [run.id]


async def test_finished_runs_are_never_claimed(storage: Storage) -> None:
    run = await create_one(storage)
    await storage.cancel_run(run.id, T0)

    assert await claim(storage, now=T0 + 100) == []


async def test_concurrent_claimers_take_disjoint_runs(
    storage: Storage, other_storage: Callable[[], AbstractAsyncContextManager[Storage]]
) -> None:
    """Four instances (four processes' worth) claim at once: every run exactly once."""
    runs = await create(storage, *(new_run() for _ in range(40)))
    async with AsyncExitStack() as stack:
        claimers = [storage] + [await stack.enter_async_context(other_storage()) for _ in range(3)]
        batches = await asyncio.gather(
            *(claim(s, f"w{i}", limit=5) for i, s in enumerate(claimers * 3))
        )

    claimed = [run.id for batch in batches for run in batch]
    assert all(len(batch) <= 5 for batch in batches)
    assert len(claimed) == len(set(claimed))
    assert claimed  # SKIP LOCKED may hand a claimer fewer rows than asked, never the same one
    leftover = await claim(storage, "w-last", limit=100)
    assert sorted(claimed + [r.id for r in leftover]) == sorted(r.id for r in runs)
    for run_id in claimed:
        assert (await get(storage, run_id)).attempt == 1


async def test_a_queue_paused_or_limited_elsewhere_is_respected_by_the_next_claim(
    storage: Storage, other_storage: Callable[[], AbstractAsyncContextManager[Storage]]
) -> None:
    """A claimer that last saw its queue open sends its claim with the settings lookup; the
    claim itself must still honour a pause or a limit another process set meanwhile."""
    for _ in range(4):
        await create_one(storage)
    assert len(await claim(storage, limit=1)) == 1  # the queue was open: remembered so

    async with other_storage() as admin:
        await admin.set_queue_paused("default", True, T0)
        assert await claim(storage, limit=10, now=T0 + 1) == []

        await admin.set_queue_paused("default", False, T0)
        await admin.upsert_queues([QueueLimits("default", concurrency=2)], T0)
        assert len(await claim(storage, limit=10, now=T0 + 2)) == 1  # 1 running + 1 = 2
        assert await claim(storage, limit=10, now=T0 + 3) == []
    assert await storage.count_by_status() == {"running": 2, "queued": 2}
