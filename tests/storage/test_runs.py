"""Creating, reading, listing, cancelling and expiring runs."""

from __future__ import annotations

import pytest

from perdure.core.clock import to_datetime
from perdure.core.errors import StorageError
from perdure.core.statuses import RunStatus
from perdure.storage import Storage
from tests.storage.factories import (
    T0,
    claim,
    claim_one,
    completed,
    create,
    create_one,
    event_types,
    get,
    new_run,
)


async def test_create_then_get_returns_the_stored_run(storage: Storage) -> None:
    new = new_run(
        task_id="resize",
        queue="images",
        priority=5,
        input_json='{"b":2,"a":[1,"x"]}',
        tags=["user:7", "img"],
        metadata={"k": "v"},
        timeout=12.5,
        version="v3",
        concurrency_key="user-7",
        expires_at=T0 + 3600,
    )
    [(created_id, was_created)] = await storage.create_runs([new], T0)

    stored = await get(storage, new.id)
    assert (created_id, was_created) == (new.id, True)
    assert stored.status is RunStatus.QUEUED
    assert (stored.task_id, stored.queue, stored.priority) == ("resize", "images", 5)
    assert stored.input == {"b": 2, "a": [1, "x"]}
    assert (stored.tags, stored.metadata) == (["user:7", "img"], {"k": "v"})
    assert (stored.timeout, stored.version, stored.concurrency_key) == (12.5, "v3", "user-7")
    assert stored.attempt == 0
    assert stored.root_id == new.id
    assert stored.created_at == stored.updated_at == to_datetime(T0)
    assert stored.available_at == to_datetime(T0)
    assert stored.expires_at == to_datetime(T0 + 3600)
    assert stored.started_at is None
    assert stored.finished_at is None
    events = await storage.get_events(new.id)
    assert [(e.seq, e.type, e.data) for e in events] == [
        (1, "created", {"status": "queued", "queue": "images"})
    ]


async def test_get_run_of_an_unknown_id_is_none(storage: Storage) -> None:
    assert await storage.get_run("run_does_not_exist") is None


async def test_delayed_run_records_when_it_becomes_available(storage: Storage) -> None:
    run = await create_one(storage, status=RunStatus.DELAYED, available_at=T0 + 60)

    assert (await get(storage, run.id)).status is RunStatus.DELAYED
    [event] = await storage.get_events(run.id)
    assert event.data == {"status": "delayed", "queue": "default", "available_at": T0 + 60}


async def test_batch_create_stores_every_run(storage: Storage) -> None:
    runs = [new_run(), new_run(task_id="other"), new_run(parent_id="run_parent")]

    created = await create(storage, *runs)

    assert [r.id for r in await storage.get_runs([r.id for r in runs])] == [r.id for r in runs]
    assert [r.id for r in created] == [r.id for r in runs]
    assert (await get(storage, runs[2].id)).parent_id == "run_parent"


async def test_batch_create_is_one_transaction(storage: Storage) -> None:
    first = new_run()
    duplicate_id = new_run(id=first.id)  # fails inside the same transaction
    heard: list[str] = []
    storage.add_listener(lambda channel, _payload: heard.append(channel))

    with pytest.raises(StorageError):
        await storage.create_runs([new_run(), first, duplicate_id], T0)

    assert await storage.get_run(first.id) is None
    assert await storage.count_by_status() == {}
    assert heard == []  # notifications of a rolled-back transaction are dropped


async def test_idempotency_key_returns_the_first_run(storage: Storage) -> None:
    first = await create_one(storage, idempotency_key="img-42", idempotency_expires_at=T0 + 60)

    again = new_run(idempotency_key="img-42", idempotency_expires_at=T0 + 60)
    [(run_id, created)] = await storage.create_runs([again], T0 + 30)

    assert not created
    assert run_id == first.id
    assert await storage.get_run(again.id) is None
    assert await storage.count_by_status() == {"queued": 1}


async def test_idempotency_key_without_expiry_never_expires(storage: Storage) -> None:
    first = await create_one(storage, idempotency_key="forever")

    [result] = await storage.create_runs([new_run(idempotency_key="forever")], T0 + 1e6)

    assert result == (first.id, False)


async def test_duplicate_keys_in_one_batch_collapse(storage: Storage) -> None:
    a, b = new_run(idempotency_key="k"), new_run(idempotency_key="k")

    results = await storage.create_runs([a, b], T0)

    assert results == [(a.id, True), (a.id, False)]


async def test_idempotency_key_is_scoped_to_the_task(storage: Storage) -> None:
    await create_one(storage, task_id="a", idempotency_key="k")

    [(_, created)] = await storage.create_runs([new_run(task_id="b", idempotency_key="k")], T0)

    assert created


async def test_expired_idempotency_key_creates_a_new_run(storage: Storage) -> None:
    first = await create_one(storage, idempotency_key="k", idempotency_expires_at=T0 + 10)

    second = new_run(idempotency_key="k", idempotency_expires_at=T0 + 30)
    [(run_id, created)] = await storage.create_runs([second], T0 + 20)

    assert created
    assert run_id == second.id
    assert (await get(storage, first.id)).idempotency_key is None
    assert (await get(storage, second.id)).idempotency_key == "k"
    [again] = await storage.create_runs([new_run(idempotency_key="k")], T0 + 25)
    assert again == (second.id, False)


async def test_get_runs_keeps_the_order_asked_and_skips_unknown_ids(storage: Storage) -> None:
    a, b = await create(storage, new_run(), new_run())

    runs = await storage.get_runs([b.id, "run_unknown", a.id])

    assert [r.id for r in runs] == [b.id, a.id]
    assert await storage.get_runs([]) == []


async def test_list_runs_filters(storage: Storage) -> None:
    a = await create_one(storage, task_id="a", queue="q1")
    b = await create_one(storage, task_id="b", queue="q2", parent_id=a.id)
    c = await create_one(storage, task_id="a", queue="q2")
    await storage.cancel_run(c.id, T0)

    async def ids(**filters: str) -> list[str]:
        return [r.id for r in (await storage.list_runs(**filters)).runs]

    assert await ids() == [c.id, b.id, a.id]
    assert await ids(task_id="a") == [c.id, a.id]
    assert await ids(queue="q2") == [c.id, b.id]
    assert await ids(status="cancelled") == [c.id]
    assert await ids(status="queued", task_id="a") == [a.id]
    assert await ids(parent_id=a.id) == [b.id]
    assert await ids(task_id="missing") == []


async def test_list_runs_pages_newest_first_with_a_cursor(storage: Storage) -> None:
    runs = await create(storage, *(new_run(created=T0 + i) for i in range(5)))
    newest_first = [r.id for r in reversed(runs)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await storage.list_runs(limit=2, cursor=cursor)
        pages += 1
        seen.extend(r.id for r in page.runs)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == newest_first
    assert pages == 3
    assert (await storage.list_runs(limit=5)).next_cursor is None


async def test_count_by_status(storage: Storage) -> None:
    await create(storage, new_run(), new_run(), new_run(status=RunStatus.DELAYED))
    await claim_one(storage)

    assert await storage.count_by_status() == {"queued": 1, "running": 1, "delayed": 1}


async def test_cancel_a_queued_run(storage: Storage) -> None:
    run = await create_one(storage)

    cancelled, changed = await storage.cancel_run(run.id, T0 + 5, reason="user asked")

    assert changed
    assert cancelled is not None
    stored = await get(storage, run.id)
    assert stored == cancelled
    assert stored.status is RunStatus.CANCELLED
    assert stored.finished_at == to_datetime(T0 + 5)
    assert stored.available_at is None
    assert stored.error is not None
    assert (stored.error.type, stored.error.message) == ("RunCancelledError", "user asked")
    assert await event_types(storage, run.id) == ["created", "cancelled"]


async def test_cancel_a_running_run_clears_its_lease(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)

    _, changed = await storage.cancel_run(run.id, T0 + 1)

    stored = await get(storage, run.id)
    assert changed
    assert stored.status is RunStatus.CANCELLED
    assert stored.lease_owner is None
    assert stored.lease_expires_at is None


async def test_cancel_a_finished_run_changes_nothing(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    await storage.finish_attempts("w1", [completed(run)], T0 + 1)
    before = await get(storage, run.id)

    returned, changed = await storage.cancel_run(run.id, T0 + 2)

    assert not changed
    assert returned == before == await get(storage, run.id)
    assert await event_types(storage, run.id) == ["created", "attempt_started", "completed"]


async def test_cancel_twice_changes_once(storage: Storage) -> None:
    run = await create_one(storage)
    await storage.cancel_run(run.id, T0 + 1)

    _, changed = await storage.cancel_run(run.id, T0 + 2)

    assert not changed
    assert (await get(storage, run.id)).finished_at == to_datetime(T0 + 1)


async def test_cancel_an_unknown_run(storage: Storage) -> None:
    assert await storage.cancel_run("run_unknown", T0) == (None, False)


async def test_expire_runs_whose_ttl_passed_before_they_started(storage: Storage) -> None:
    doomed = await create_one(storage, expires_at=T0 + 10)
    later = await create_one(storage, expires_at=T0 + 100)
    no_ttl = await create_one(storage)

    assert await storage.expire_runs(T0 + 5) == []
    assert await storage.expire_runs(T0 + 10) == [doomed.id]

    stored = await get(storage, doomed.id)
    assert stored.status is RunStatus.EXPIRED
    assert stored.finished_at == to_datetime(T0 + 10)
    assert stored.error is not None
    assert stored.error.type == "RunExpiredError"
    assert await event_types(storage, doomed.id) == ["created", "expired"]
    assert (await get(storage, later.id)).status is RunStatus.QUEUED
    assert (await get(storage, no_ttl.id)).status is RunStatus.QUEUED
    assert await storage.expire_runs(T0 + 10) == []  # exactly one terminal write


async def test_a_started_run_does_not_expire(storage: Storage) -> None:
    run = await create_one(storage, expires_at=T0 + 10)
    await claim_one(storage, now=T0 + 1)

    assert await storage.expire_runs(T0 + 20) == []
    assert (await get(storage, run.id)).status is RunStatus.RUNNING


async def test_a_cancelled_run_does_not_expire(storage: Storage) -> None:
    run = await create_one(storage, expires_at=T0 + 10)
    await storage.cancel_run(run.id, T0 + 1)

    assert await storage.expire_runs(T0 + 20) == []
    assert (await get(storage, run.id)).status is RunStatus.CANCELLED


async def test_expire_runs_respects_the_limit(storage: Storage) -> None:
    await create(storage, *(new_run(expires_at=T0 + 1) for _ in range(3)))

    assert len(await storage.expire_runs(T0 + 2, limit=2)) == 2
    assert len(await storage.expire_runs(T0 + 2, limit=2)) == 1
    assert await storage.count_by_status() == {"expired": 3}


async def test_finished_runs_gives_a_snapshot_only_of_finished_runs(storage: Storage) -> None:
    done, waiting = await create(storage, new_run(task_id="done"), new_run(task_id="waiting"))
    [claimed] = await claim(storage, "w", task_ids=["done"])
    await storage.finish_attempts("w", [completed(claimed, output="7")], T0 + 1)

    found = await storage.finished_runs([done.id, "run_unknown", waiting.id])

    assert set(found) == {done.id, waiting.id}  # an unknown id is left out
    finished = found[done.id]
    assert finished is not None
    assert (finished.status, finished.output) == (RunStatus.COMPLETED, 7)
    assert found[waiting.id] is None  # exists, not finished
    assert await storage.finished_runs([]) == {}
    # Runs known to exist: only the finished ones are read.
    known = await storage.finished_runs([done.id, waiting.id], known=True)
    assert list(known) == [done.id]
    assert known[done.id] == finished
