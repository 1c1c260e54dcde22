"""The `def` (thread) flavour of durable functions: `ctx.step_sync`, `ctx.sleep_sync`,
`ctx.create_token_sync` / `ctx.wait_for_token_sync` and `task.trigger_and_wait_sync` in a
`def` task body, with the same suspend-and-replay behaviour as the async forms."""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel

from perdure import ManualClock, RunContext, RunStatus, SyncInAsyncError

from .conftest import MakeEngine
from .durable.support import (
    HOUR,
    Calls,
    advance,
    assert_contiguous,
    recorded,
    token_id_of,
    wait_suspended,
)
from .support import count


class Label(BaseModel):
    text: str


async def test_def_body_steps_sleeps_tokens_and_child_waits(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    threads: set[str] = set()

    def make_label(n: int) -> Label:
        calls.hit("label")
        threads.add(threading.current_thread().name)
        return Label(text=f"#{n}")

    @engine.task(id="durable-sync-child")
    def double(ctx: RunContext, n: int) -> int:
        return 2 * n

    @engine.task(id="durable-sync-flow")
    def flow(ctx: RunContext, n: int) -> dict[str, Any]:
        calls.hit("body")
        label = ctx.step_sync("label", make_label, n)
        assert isinstance(label, Label)
        ctx.sleep_sync(HOUR)
        token = ctx.create_token_sync()
        answer = ctx.wait_for_token_sync(token, Label)
        child = double.trigger_and_wait_sync(n)
        return {"label": label.text, "answer": answer.text, "child": child.output}

    async with engine:
        handle = await flow.trigger(21)
        await wait_suspended(engine, handle.id)  # the long sleep
        advance(engine, clock, HOUR + 1)
        token_id = await token_id_of(engine, handle.id)
        await engine.complete_token(token_id, {"text": "approved"})
        output = await handle.result(timeout=10)
        events = await handle.events()

    assert output == {"label": "#21", "answer": "approved", "child": 42}
    assert calls["label"] == 1
    assert calls["body"] == 4  # first run, after the sleep, the token, the child
    assert all(name != threading.main_thread().name for name in threads)
    assert [kind for kind in ("step", "sleep", "token") if recorded(events, kind)] == [
        "step",
        "sleep",
        "token",
    ]
    assert count(events, "children_recorded") == 1
    assert count(events, "suspended") == 3
    assert_contiguous(events)


async def test_sync_forms_refuse_to_run_inside_an_event_loop(make_engine: MakeEngine) -> None:
    engine = make_engine()
    seen: list[str] = []

    @engine.task(id="durable-sync-misuse")
    async def flow(ctx: RunContext) -> list[str]:
        try:
            ctx.step_sync("x", lambda: 1)
        except SyncInAsyncError as exc:
            seen.append(str(exc))
        return seen

    async with engine:
        handle = await flow.trigger(None)
        messages = await handle.result(timeout=10)
        run = await handle.get()

    assert run.status is RunStatus.COMPLETED
    assert len(messages) == 1
    assert "step_sync" in messages[0]
