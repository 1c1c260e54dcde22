"""The per-run event history, and notifications sent when work appears or runs finish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from perdure.storage import CHANNEL_CANCEL, CHANNEL_FINISHED, CHANNEL_WORK, Storage
from perdure.storage.postgres import PostgresDatabase
from tests.pg import PostgresServer
from tests.storage.factories import (
    LEASE,
    T0,
    claim_one,
    completed,
    create_one,
    failed,
    open_storage,
)


async def test_event_seqs_are_contiguous_over_a_whole_life(storage: Storage) -> None:
    run = await create_one(storage)
    first = await claim_one(storage, "w1", now=T0 + 1)
    await storage.extend_leases("w1", [(run.id, 1)], LEASE, T0 + 2)
    await storage.finish_attempts("w1", [failed(first, retry_at=T0 + 3)], T0 + 2)
    await claim_one(storage, "w2", now=T0 + 3)
    await storage.recover_expired_leases(T0 + 3 + LEASE + 1, max_lost_leases=5)
    third = await claim_one(storage, "w3", now=T0 + 40)
    await storage.release_runs("w3", [(run.id, third.attempt)], T0 + 41)
    fourth = await claim_one(storage, "w4", now=T0 + 42)
    await storage.finish_attempts("w4", [completed(fourth)], T0 + 43)

    events = await storage.get_events(run.id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events] == [
        "created",
        "attempt_started",
        "attempt_failed",
        "retry_scheduled",
        "attempt_started",
        "lease_lost",
        "attempt_started",
        "lease_released",
        "attempt_started",
        "completed",
    ]
    assert [e.data.get("attempt") for e in events if e.type == "attempt_started"] == [1, 2, 3, 4]
    assert all(e.run_id == run.id for e in events)


async def test_get_events_after_a_seq_with_a_limit(storage: Storage) -> None:
    run = await create_one(storage)
    first = await claim_one(storage)
    await storage.finish_attempts("w1", [failed(first)], T0 + 1)

    assert [e.seq for e in await storage.get_events(run.id, after_seq=2)] == [3, 4]
    assert [e.seq for e in await storage.get_events(run.id, after_seq=1, limit=2)] == [2, 3]
    assert await storage.get_events(run.id, after_seq=4) == []
    assert await storage.get_events("run_unknown") == []


async def test_events_of_different_runs_are_separate(storage: Storage) -> None:
    a = await create_one(storage)
    b = await create_one(storage)
    await claim_one(storage)

    assert len(await storage.get_events(a.id)) + len(await storage.get_events(b.id)) == 3


class Heard:
    """A listener that records notifications and wakes waiters on a chosen one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._waiters: list[tuple[Callable[[str, str], bool], asyncio.Event]] = []

    def __call__(self, channel: str, payload: str) -> None:
        self.items.append((channel, payload))
        for predicate, event in self._waiters:
            if predicate(channel, payload):
                event.set()

    async def wait_for(
        self, channel: str, payload: str | None = None, timeout: float = 1.0
    ) -> None:
        def matches(c: str, p: str) -> bool:
            return c == channel and (payload is None or p == payload)

        if any(matches(c, p) for c, p in self.items):
            return
        event = asyncio.Event()
        self._waiters.append((matches, event))
        await asyncio.wait_for(event.wait(), timeout)

    def channels(self) -> list[str]:
        return [channel for channel, _ in self.items]


async def test_creating_runs_notifies_work(storage: Storage) -> None:
    heard = Heard()
    storage.add_listener(heard)

    await create_one(storage)

    assert heard.items == [(CHANNEL_WORK, "")]


async def test_finishing_notifies_finished_with_the_run_id(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    heard = Heard()
    storage.add_listener(heard)

    await storage.finish_attempts("w1", [completed(run)], T0 + 1)

    assert heard.items == [(CHANNEL_FINISHED, run.id)]


async def test_a_retry_notifies_work(storage: Storage) -> None:
    await create_one(storage)
    run = await claim_one(storage)
    heard = Heard()
    storage.add_listener(heard)

    await storage.finish_attempts("w1", [failed(run, retry_at=T0 + 1)], T0 + 1)

    assert heard.items == [(CHANNEL_WORK, "")]


async def test_cancelling_notifies_cancel_and_finished(storage: Storage) -> None:
    run = await create_one(storage)
    heard = Heard()
    storage.add_listener(heard)

    await storage.cancel_run(run.id, T0)
    await storage.cancel_run(run.id, T0)  # no change, no notification

    assert heard.items == [(CHANNEL_CANCEL, run.id), (CHANNEL_FINISHED, run.id)]


async def test_a_removed_listener_hears_nothing(storage: Storage) -> None:
    heard = Heard()
    storage.add_listener(heard)
    storage.remove_listener(heard)

    await create_one(storage)

    assert heard.items == []


# --- PostgreSQL: notifications between instances (LISTEN/NOTIFY) ------------------------------


@pytest.mark.postgres
async def test_another_instance_hears_work_and_finished(pg_url: str) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        await create_one(here)
        await remote.wait_for(CHANNEL_WORK)
        run = await claim_one(here)
        await here.finish_attempts("w1", [completed(run)], T0 + 1)
        await remote.wait_for(CHANNEL_FINISHED, run.id)

        # A probe sent after everything else arrives after our own NOTIFYs (commit order), so
        # once `here` hears it, it would already have heard its own ones had it not skipped them.
        async with there.db.transaction() as tx:
            tx.notify("probe", "done")
        await local.wait_for("probe")
        assert local.items == [
            (CHANNEL_WORK, ""),
            (CHANNEL_FINISHED, run.id),
            ("probe", "done"),
        ]
        # `there` sent the probe itself: it hears it once, from its own commit.
        assert remote.items == [(CHANNEL_WORK, ""), (CHANNEL_FINISHED, run.id), ("probe", "done")]


@pytest.mark.postgres
async def test_one_notify_per_transaction_carries_every_notification(pg_url: str) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote = Heard()
        there.add_listener(remote)

        async with here.db.transaction() as tx:
            tx.notify(CHANNEL_FINISHED, "run_a")
            tx.notify(CHANNEL_FINISHED, "run_b")
            tx.notify(CHANNEL_WORK)
        await remote.wait_for(CHANNEL_WORK)

        assert remote.items == [
            (CHANNEL_FINISHED, "run_a"),
            (CHANNEL_FINISHED, "run_b"),
            (CHANNEL_WORK, ""),
        ]


@pytest.mark.postgres
async def test_a_too_large_batch_collapses_to_its_channels(pg_url: str) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)
        ids = [f"run_{i:060d}" for i in range(300)]  # ~20 kB: over PostgreSQL's 8000 bytes

        async with here.db.transaction() as tx:
            for run_id in ids:
                tx.notify(CHANNEL_FINISHED, run_id)
            tx.notify(CHANNEL_WORK)
        await remote.wait_for(CHANNEL_WORK)

        assert remote.items == [(CHANNEL_FINISHED, ""), (CHANNEL_WORK, "")]
        assert local.items == [(CHANNEL_FINISHED, i) for i in ids] + [(CHANNEL_WORK, "")]


@pytest.mark.postgres
async def test_a_rolled_back_transaction_notifies_nobody(pg_url: str) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote, local = Heard(), Heard()
        there.add_listener(remote)
        here.add_listener(local)

        async def abort() -> None:
            async with here.db.transaction() as tx:
                tx.notify(CHANNEL_WORK)
                raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await abort()
        async with here.db.transaction() as tx:
            tx.notify("probe")
        await remote.wait_for("probe")

        assert remote.items == [("probe", "")]
        assert local.items == [("probe", "")]


@pytest.mark.postgres
async def test_listen_reconnects_after_its_connection_is_killed(
    pg_url: str, pg_server: PostgresServer
) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote = Heard()
        there.add_listener(remote)
        assert isinstance(there.db, PostgresDatabase)
        dbname = pg_url.rsplit("/", 1)[1]

        killed = pg_server.execute(
            pg_server.url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND query LIKE 'LISTEN%'",
        )
        assert len(killed) == 2  # both instances' LISTEN connections
        # After reconnecting, an instance tells its listeners to look again (it may have
        # missed notifications meanwhile): an empty payload on every channel.
        await remote.wait_for(CHANNEL_FINISHED, "", timeout=5)

        await create_one(here)
        run = await claim_one(here)
        await here.finish_attempts("w1", [completed(run)], T0 + 1)
        await remote.wait_for(CHANNEL_FINISHED, run.id)


@pytest.mark.postgres
async def test_foreign_notifications_on_the_channel_are_ignored(
    pg_url: str, pg_server: PostgresServer
) -> None:
    async with open_storage(pg_url) as here, open_storage(pg_url) as there:
        remote = Heard()
        there.add_listener(remote)

        pg_server.execute(pg_url, "NOTIFY perdure, 'not json'")
        pg_server.execute(pg_url, """NOTIFY perdure, '{"n": [[1, 2], "x"]}'""")
        async with here.db.transaction() as tx:
            tx.notify("probe")
        await remote.wait_for("probe")

        assert remote.items == [("probe", "")]
