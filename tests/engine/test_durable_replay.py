"""`engine.replay(run_id)` starts the same task again with the same input; `engine.fork(run_id,
from_step=…)` starts a new run that reuses the recorded steps before that point."""

from __future__ import annotations

import pytest

from perdure import Engine, InvalidOptionError, RunContext, RunStatus, Task

from .durable.support import Calls, assert_contiguous, recorded


def define_abc(engine: Engine, calls: Calls) -> Task[int, list[int]]:
    def bump(name: str, value: int) -> int:
        calls.hit(name)
        return value + calls[name] * 100  # a re-executed step returns a different value

    @engine.task(id="durable-abc-fork")
    async def abc(ctx: RunContext, n: int) -> list[int]:
        a = await ctx.step("a", bump, "a", n)
        b = await ctx.step("b", bump, "b", a)
        c = await ctx.step("c", bump, "c", b)
        return [a, b, c]

    return abc


async def test_replay_starts_a_new_run_with_the_same_input_that_runs_every_step(
    engine: Engine,
) -> None:
    calls = Calls()
    abc = define_abc(engine, calls)
    async with engine:
        source = await abc.trigger(1)
        assert await source.result(timeout=10) == [101, 201, 301]
        again = await engine.replay(source.id)
        assert await again.result(timeout=10) == [201, 401, 601]
        run = await again.get()

    assert again.id != source.id
    assert run.input == 1
    assert run.task_id == "durable-abc-fork"
    assert run.status is RunStatus.COMPLETED
    assert dict(calls) == {"a": 2, "b": 2, "c": 2}


async def test_fork_from_a_step_reuses_the_steps_before_it_and_reruns_the_rest(
    engine: Engine,
) -> None:
    calls = Calls()
    abc = define_abc(engine, calls)
    async with engine:
        source = await abc.trigger(1)
        assert await source.result(timeout=10) == [101, 201, 301]
        fork = await engine.fork(source.id, from_step="b")
        output = await fork.result(timeout=10)
        events = await fork.events()
        run = await fork.get()

    assert output == [101, 301, 501]  # a from the record; b and c executed again
    assert dict(calls) == {"a": 1, "b": 2, "c": 2}
    assert run.input == 1
    assert fork.id != source.id
    created = events[0]
    assert created.type == "created"
    assert created.data["forked_from"] == source.id
    assert recorded(events) == [(1, "b", "completed"), (2, "c", "completed")]
    assert_contiguous(events)


async def test_fork_from_a_position_and_from_an_unknown_step(engine: Engine) -> None:
    calls = Calls()
    abc = define_abc(engine, calls)
    async with engine:
        source = await abc.trigger(1)
        await source.result(timeout=10)
        fork = await engine.fork(source.id, from_step=2)
        assert await fork.result(timeout=10) == [101, 201, 401]
        with pytest.raises(InvalidOptionError, match="from_step"):
            await engine.fork(source.id, from_step="nope")

    assert dict(calls) == {"a": 1, "b": 1, "c": 2}
