"""PostgreSQL: a worker whose outcome landed, but whose reply was lost with the connection,
knows that it landed: no "stale write" warning, and the run ends once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from perdure import Engine, RetryPolicy, RunContext, RunStatus
from tests.storage.factories import lose_first_reply


async def test_an_outcome_whose_reply_was_lost_is_known_to_have_landed(
    engine: Engine, backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "postgres":
        pytest.skip("only PostgreSQL sends a statement again on another connection")

    @engine.task(id="double")
    async def double(ctx: RunContext, n: int) -> int:
        return n * 2

    sent = lose_first_reply(monkeypatch, "finish_attempts")
    caplog.set_level(logging.WARNING, logger="perdure")
    async with engine:
        handle = await double.trigger(21)
        run = await handle.wait(timeout=30)

    assert sent() >= 2, "the outcome was sent again"
    assert run.status is RunStatus.COMPLETED
    assert await handle.result() == 42
    types = [event.type for event in await handle.events()]
    assert types == ["created", "attempt_started", "completed"]
    assert not [r for r in caplog.records if "stale write" in r.getMessage()]


async def test_a_child_wait_whose_commit_reply_was_lost_does_not_fail_the_parent(
    engine: Engine, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `trigger_and_wait` records the wait and creates the child in one transaction; its
    # COMMIT lands but the reply is lost. The write is tried again, finds its own records
    # and goes on: the parent neither fails nor creates the child twice.
    if backend != "postgres":
        pytest.skip("only PostgreSQL loses a COMMIT reply here")
    from perdure.storage.postgres import PostgresTx

    execute = PostgresTx._execute  # pyright: ignore[reportPrivateUsage]
    armed: set[int] = set()
    lost: list[bool] = []

    async def losing(conn: Any, batch: Any) -> Any:
        names = [name for name, _, _ in batch]
        cursors = await execute(conn, batch)
        if "insert_runs" in names and not lost:
            armed.add(id(conn))
        if "commit" in names and id(conn) in armed and not lost:
            lost.append(True)
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return cursors

    monkeypatch.setattr(PostgresTx, "_execute", staticmethod(losing))

    @engine.task(id="child")
    async def child(ctx: RunContext, n: int) -> int:
        return n + 1

    @engine.task(id="parent", retry=RetryPolicy(max_attempts=1))
    async def parent(ctx: RunContext, n: int) -> int:
        result = await child.trigger_and_wait(n)
        assert result.ok
        return result.output

    async with engine:
        handle = await parent.trigger(1)
        run = await handle.wait(timeout=20)
        children = await engine.list_runs(task_id="child")
    assert lost, "the COMMIT reply was not lost"
    assert (run.status, run.output) == (RunStatus.COMPLETED, 2)
    assert len(children.runs) == 1
