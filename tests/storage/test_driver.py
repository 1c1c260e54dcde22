"""The driver boundary: database errors surface as StorageError naming what failed."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from perdure.core.errors import StorageError
from perdure.storage import Storage, make_database, make_storage
from tests.pg import PostgresServer, database_name, with_database
from tests.storage.factories import T0, create_one, open_storage


async def test_a_failed_query_raises_storage_error_naming_it(storage: Storage) -> None:
    run = await create_one(storage)
    row = {"run_id": run.id, "seq": 1, "type": "created", "at": T0, "data": "{}"}

    with pytest.raises(StorageError, match="insert_event") as raised:
        async with storage.db.transaction() as tx:
            await tx.execute("insert_event", row)  # (run_id, seq) is already taken

    assert raised.value.__cause__ is not None
    assert not isinstance(raised.value, psycopg.Error)
    assert len(await storage.get_events(run.id)) == 1


async def test_a_closed_storage_raises_storage_error(storage: Storage) -> None:
    await storage.close()

    with pytest.raises(StorageError, match="not open"):
        await storage.get_run("run_x")


async def test_a_failed_transaction_leaves_the_connection_usable(storage: Storage) -> None:
    async def fail_midway() -> None:
        async with storage.db.transaction() as tx:
            key = {"task_id": "t", "idempotency_key": "k", "now": T0}
            await tx.execute("release_idempotency_key", key)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_midway()

    for _ in range(12):  # more than the pool holds: every connection came back clean
        await create_one(storage)
    assert await storage.count_by_status() == {"queued": 12}


@pytest.mark.postgres
async def test_an_unreachable_postgres_database_raises_storage_error(pg_url: str) -> None:
    db = make_database(with_database(pg_url, "perdure_no_such_database"))

    with pytest.raises(StorageError, match="perdure_no_such_database") as raised:
        await db.open()

    assert isinstance(raised.value.__cause__, psycopg.Error)
    await db.close()


@pytest.mark.postgres
async def test_a_swallowed_error_does_not_commit_silently(pg_url: str) -> None:
    """PostgreSQL turns COMMIT of an aborted transaction into ROLLBACK; the driver says so."""
    storage = make_storage(pg_url)
    await storage.open()
    try:
        run = await create_one(storage)
        row = {"run_id": run.id, "seq": 1, "type": "created", "at": T0, "data": "{}"}

        async def swallow_an_error() -> None:
            async with storage.db.transaction() as tx:
                cancel = {"id": run.id, "now": T0, "error": None, "from_statuses": ["queued"]}
                assert await tx.fetchone("cancel_run", cancel) is not None
                with pytest.raises(StorageError):
                    await tx.execute("insert_event", row)

        with pytest.raises(StorageError, match="rolled back"):
            await swallow_an_error()

        assert (await storage.get_run(run.id)) == run  # the cancel was not committed
    finally:
        await storage.close()


@pytest.mark.postgres
async def test_cancelling_a_transaction_mid_query_rolls_it_back(
    pg_url: str, pg_server: PostgresServer
) -> None:
    """Shutdown cancels tasks: the transaction must roll back and its connection recover."""
    dbname = database_name(pg_url)
    sleeping = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{dbname}' AND query LIKE 'SELECT pg_sleep%'"
    )
    async with open_storage(pg_url) as storage:
        run = await create_one(storage)

        async def cancel_then_hang() -> None:
            async with storage.db.transaction() as tx:
                cancel = {"id": run.id, "now": T0, "error": None, "from_statuses": ["queued"]}
                await tx.fetchone("cancel_run", cancel)
                await storage.db.run_script(tx, "SELECT pg_sleep(30)")

        task = asyncio.create_task(cancel_then_hang())
        while pg_server.execute(pg_url, sleeping) != [(1,)]:
            await asyncio.sleep(0.01)  # wait until the query is running on the server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert await storage.get_run(run.id) == run
        for _ in range(12):  # more than the pool holds: every connection is usable
            await create_one(storage)
        assert await storage.count_by_status() == {"queued": 13}
        assert pg_server.execute(pg_url, sleeping) == [(0,)]


@pytest.mark.postgres
async def test_a_write_survives_pooled_connections_killed_by_the_server(
    pg_url: str, pg_server: PostgresServer
) -> None:
    """After a PostgreSQL restart every pooled connection is dead; BEGIN finds out and the
    transaction moves on to a fresh connection instead of failing."""
    async with open_storage(pg_url) as storage:
        await asyncio.gather(*(create_one(storage) for _ in range(5)))  # fill the pool a bit
        killed = pg_server.execute(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database_name(pg_url)}' AND pid <> pg_backend_pid() "
            "AND query NOT LIKE 'LISTEN%'",
        )
        assert killed

        run = await create_one(storage)

        assert (await storage.get_run(run.id)) == run
        assert await storage.count_by_status() == {"queued": 6}
