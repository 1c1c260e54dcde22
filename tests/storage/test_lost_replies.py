"""PostgreSQL connections that fail under a statement: an autocommit statement that committed
but whose reply was lost with its connection is sent again on another pooled connection, and
must land once and be reported as it happened; statements prepared before a schema change
are prepared again on a new connection."""

from __future__ import annotations

import psycopg
import pytest

from perdure.storage import Storage
from perdure.storage.database import ConflictError
from tests.storage.factories import T0, claim, lose_first_reply, new_run


@pytest.fixture
def postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("only PostgreSQL sends a statement again on another connection")


@pytest.mark.usefixtures("postgres_only")
async def test_a_trigger_whose_reply_was_lost_reports_the_runs_it_created(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = lose_first_reply(monkeypatch, "create_runs_at_once")
    runs = [new_run(), new_run()]

    results = await storage.create_runs(runs, T0)

    assert sent() == 2, "the statement was sent again"
    assert results == [(r.id, True) for r in runs]
    stored = await storage.get_runs([r.id for r in runs])
    assert [run.id for run in stored] == [r.id for r in runs]
    for run in runs:
        assert [e.type for e in await storage.get_events(run.id)] == ["created"]


@pytest.mark.usefixtures("postgres_only")
async def test_a_trigger_that_clashes_without_a_replay_still_fails(
    storage: Storage,
) -> None:
    run = new_run()
    await storage.create_runs([run], T0)

    with pytest.raises(ConflictError):
        await storage.create_runs([run], T0)


@pytest.mark.usefixtures("postgres_only")
async def test_statements_prepared_before_a_migration_added_a_column_are_prepared_again(
    storage: Storage, backend_url: str
) -> None:
    """A newer version's migration adds a column while this one runs: PostgreSQL refuses the
    `SELECT *` / `RETURNING *` statements the pooled connections prepared before, for good."""
    created = await storage.get_runs(
        [run_id for run_id, _ in await storage.create_runs([new_run() for _ in range(3)], T0)]
    )
    for _ in range(8):  # past psycopg's prepare threshold, on whichever connections serve
        await storage.get_runs([run.id for run in created])
        await storage.get_run(created[0].id)
    async with await psycopg.AsyncConnection.connect(backend_url, autocommit=True) as admin:
        await admin.execute("ALTER TABLE perdure_runs ADD COLUMN added_later integer")

    for _ in range(3):
        assert [run.id for run in await storage.get_runs([r.id for r in created])] == [
            r.id for r in created
        ]
        fetched = await storage.get_run(created[0].id)
        assert fetched is not None
        assert fetched.id == created[0].id
    claimed = await claim(storage, "w1", limit=3)
    assert sorted(run.id for run in claimed) == sorted(run.id for run in created)
