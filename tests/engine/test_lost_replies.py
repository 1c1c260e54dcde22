"""PostgreSQL: a worker whose outcome landed, but whose reply was lost with the connection,
knows that it landed: no "stale write" warning, and the run ends once."""

from __future__ import annotations

import logging

import pytest

from perdure import Engine, RunContext, RunStatus
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
