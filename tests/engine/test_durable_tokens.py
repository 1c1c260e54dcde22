"""Wait tokens: a run waiting on a token suspends; completing the token (from this process or
another one) resumes it with the output; the first completion wins; unknown tokens and
timeouts give clear errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from perdure import (
    Engine,
    ManualClock,
    RetryPolicy,
    RunContext,
    RunStatus,
    TokenNotFoundError,
    TokenTimeoutError,
)

from .conftest import MakeEngine
from .durable.support import (
    HOUR,
    Calls,
    advance,
    assert_contiguous,
    token_id_of,
    wait_for_event,
    wait_suspended,
)
from .support import count

COMPLETE_TOKEN_SCRIPT = Path(__file__).parent / "apps" / "complete_token.py"


class Approval(BaseModel):
    approved: bool
    by: str


def define_approval(engine: Engine, calls: Calls, timeout: float | None = None) -> None:
    @engine.task(id="durable-approval", retry=RetryPolicy(max_attempts=1))
    async def approval(ctx: RunContext, doc: str) -> dict[str, Any]:
        calls.hit("body")
        token = await ctx.create_token(timeout=timeout)
        ctx.metadata["token"] = token.id
        try:
            answer = await ctx.wait_for_token(token, Approval)
        except TokenTimeoutError as exc:
            calls.hit("timed out")
            return {"doc": doc, "answer": None, "error": str(exc)}
        calls.hit("answered")
        return {"doc": doc, "answer": answer.model_dump(), "type": type(answer).__name__}


async def test_wait_for_token_suspends_and_complete_token_resumes_with_the_output(
    engine: Engine,
) -> None:
    calls = Calls()
    define_approval(engine, calls)
    async with engine:
        handle = await engine.trigger("durable-approval", "contract")
        token_id = await token_id_of(engine, handle.id)
        run = await handle.get()
        assert run.status is RunStatus.SUSPENDED
        assert run.metadata == {"token": token_id}  # flushed before the run suspended
        record = await engine.complete_token(token_id, {"approved": True, "by": "ann"})
        output = await handle.result(timeout=10)
        events = await handle.events()

    assert record.status == "completed"
    assert record.output == {"approved": True, "by": "ann"}
    assert output == {
        "doc": "contract",
        "answer": {"approved": True, "by": "ann"},
        "type": "Approval",
    }  # rehydrated to the type given to wait_for_token
    assert dict(calls) == {"body": 2, "answered": 1}
    assert count(events, "token_recorded") == 1
    assert count(events, "token_completed") == 1
    assert_contiguous(events)


async def test_completing_a_token_twice_keeps_the_first_completion(engine: Engine) -> None:
    calls = Calls()
    define_approval(engine, calls)
    async with engine:
        handle = await engine.trigger("durable-approval", "contract")
        token_id = await token_id_of(engine, handle.id)
        first = await engine.complete_token(token_id, {"approved": True, "by": "ann"})
        second = await engine.complete_token(token_id, {"approved": False, "by": "bob"})
        output = await handle.result(timeout=10)
        third = await engine.complete_token(token_id, {"approved": False, "by": "cy"})
        events = await handle.events()

    assert second == first
    assert third == first
    assert output["answer"] == {"approved": True, "by": "ann"}
    assert count(events, "token_completed") == 1
    assert_contiguous(events)


async def test_completing_an_unknown_token_raises_a_clear_error(engine: Engine) -> None:
    define_approval(engine, Calls())
    async with engine:
        with pytest.raises(TokenNotFoundError, match="unknown token 'tok_nope'"):
            await engine.complete_token("tok_nope", {"approved": True})


async def test_token_timeout_raises_token_timeout_error_inside_the_body(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    calls = Calls()
    define_approval(engine, calls, timeout=HOUR)
    async with engine:
        handle = await engine.trigger("durable-approval", "contract")
        token_id = await token_id_of(engine, handle.id)
        run = await handle.get()
        assert run.available_at is not None
        assert run.available_at.timestamp() == pytest.approx(clock.time() + HOUR)
        advance(engine, clock, HOUR + 1)
        output = await handle.result(timeout=10)
        # Too late: the timeout was recorded first, and the first settlement wins.
        late = await engine.complete_token(token_id, {"approved": True, "by": "ann"})

    assert output["answer"] is None
    assert token_id in output["error"]
    assert "timeout" in output["error"]
    assert dict(calls) == {"body": 2, "timed out": 1}
    assert late.status == "failed"
    assert late.error is not None
    assert late.error.type == "TokenTimeoutError"


async def test_a_timed_out_token_stays_timed_out_on_replay_even_if_completed_later(
    make_engine: MakeEngine, clock: ManualClock
) -> None:
    engine = make_engine(clock=clock)
    seen: list[str] = []

    @engine.task(id="durable-timeout-replay")
    async def flow(ctx: RunContext) -> list[str]:
        token = await ctx.create_token(timeout=60)
        ctx.metadata["token"] = token.id
        try:
            seen.append(f"answer {await ctx.wait_for_token(token)}")
        except TokenTimeoutError:
            seen.append("timed out")
        await ctx.sleep(HOUR)  # the run suspends again after taking the timeout branch
        return seen[-1:]

    async with engine:
        handle = await flow.trigger(None)
        token_id = await token_id_of(engine, handle.id)
        advance(engine, clock, 61)
        await wait_for_event(engine, handle.id, "suspended", 2)  # now in the long sleep
        await wait_suspended(engine, handle.id)
        # Completing the token now must not change what the replay sees.
        await engine.complete_token(token_id, "late answer")
        advance(engine, clock, HOUR + 1)
        assert await handle.result(timeout=10) == ["timed out"]
    assert seen == ["timed out", "timed out"]


async def test_token_completed_by_another_process_resumes_the_run(
    make_engine: MakeEngine, shared_url: str
) -> None:
    # The system clock: the other process stamps its wake-up with its own clock.
    engine = make_engine()
    calls = Calls()
    define_approval(engine, calls)
    async with engine:
        handle = await engine.trigger("durable-approval", "contract")
        token_id = await token_id_of(engine, handle.id)
        done = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(COMPLETE_TOKEN_SCRIPT),
                shared_url,
                token_id,
                json.dumps({"approved": True, "by": "other process"}),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"approved": True, "by": "other process"}
        output = await handle.result(timeout=10)

    assert output["answer"] == {"approved": True, "by": "other process"}
    assert calls["answered"] == 1


async def test_cancelling_a_suspended_run_is_final_even_if_its_token_completes_later(
    engine: Engine,
) -> None:
    calls = Calls()
    define_approval(engine, calls)
    async with engine:
        handle = await engine.trigger("durable-approval", "contract")
        token_id = await token_id_of(engine, handle.id)
        cancelled = await handle.cancel("withdrawn")
        await engine.complete_token(token_id, {"approved": True, "by": "ann"})
        await asyncio.sleep(0.3)  # several poll intervals: nothing may pick the run up
        run = await handle.get()
        events = await handle.events()

    assert cancelled.status is RunStatus.CANCELLED
    assert run.status is RunStatus.CANCELLED
    assert run.error is not None
    assert run.error.message == "withdrawn"
    assert dict(calls) == {"body": 1}
    assert count(events, "attempt_started") == 1
    assert_contiguous(events)
