"""PostgreSQL: an autocommit statement that committed, but whose reply was lost with its
connection, is sent again on another pooled connection; the write must land once and be
reported as it happened."""

from __future__ import annotations

import pytest

from perdure.storage import Storage
from perdure.storage.database import ConflictError
from tests.storage.factories import T0, lose_first_reply, new_run


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
    assert [(run.id, created) for run, created in results] == [(r.id, True) for r in runs]
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
