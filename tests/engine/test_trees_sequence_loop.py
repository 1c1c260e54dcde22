"""Sequences (each output is the next step's input) and loops (repeat an iteration task until
it returns `LoopResult(done=True)`), as in the `durable-execution` README (reference 001)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from perdure import (
    ConfigurationError,
    Engine,
    FinalizeInput,
    InvalidOptionError,
    LoopOutput,
    LoopResult,
    NonRetryableError,
    Parent,
    RunContext,
    RunStatus,
    child,
)

from .trees.support import NO_RETRY, Calls, runs_of


class Name(BaseModel):
    name: str


class AOut(BaseModel):
    name: str
    task_a_output: str


class BOut(BaseModel):
    name: str
    task_a_output: str
    task_b_output: str


class COut(BaseModel):
    task_a_output: str
    task_b_output: str
    task_c_output: str


async def test_sequence_pipes_each_output_into_the_next_step(engine: Engine) -> None:
    @engine.task(id="a")
    async def task_a(ctx: RunContext, req: Name) -> AOut:
        return AOut(name=req.name, task_a_output=f"Hello from task A, {req.name}!")

    @engine.task(id="b")
    async def task_b(ctx: RunContext, req: AOut) -> BOut:
        return BOut(
            name=req.name,
            task_a_output=req.task_a_output,
            task_b_output=f"Hello from task B, {req.name}!",
        )

    @engine.task(id="c")
    async def task_c(ctx: RunContext, req: BOut) -> COut:
        return COut(
            task_a_output=req.task_a_output,
            task_b_output=req.task_b_output,
            task_c_output=f"Hello from task C, {req.name}!",
        )

    seq = engine.sequence("seq", [task_a, task_b, task_c])

    async with engine:
        handle = await seq.trigger(Name(name="world"))
        output = await handle.result(timeout=10)
        run = await handle.get()
        steps = await engine.children(handle.id)

    assert run.status is RunStatus.COMPLETED
    assert output == COut(
        task_a_output="Hello from task A, world!",
        task_b_output="Hello from task B, world!",
        task_c_output="Hello from task C, world!",
    )
    assert [(s.task_id, s.status) for s in steps] == [
        ("a", RunStatus.COMPLETED),
        ("b", RunStatus.COMPLETED),
        ("c", RunStatus.COMPLETED),
    ]
    assert steps[1].input == {"name": "world", "task_a_output": "Hello from task A, world!"}


class AParentOut(BaseModel):
    name: str
    task_a_output: str
    task_a1_output: str
    task_a2_output: str


async def test_sequence_of_parents_with_parallel_children(engine: Engine) -> None:
    def leaf(task_id: str) -> Any:
        @engine.task(id=task_id)
        async def hello(ctx: RunContext, name: str) -> str:
            return f"Hello from task {task_id.upper()}, {name}!"

        return hello

    a1, a2, b1, b2 = leaf("a1"), leaf("a2"), leaf("b1"), leaf("b2")

    def finalize_a(ctx: RunContext, data: FinalizeInput[dict[str, str]]) -> AParentOut:
        c1, c2 = data.children
        if not (c1.ok and c2.ok and data.output):
            raise NonRetryableError("Children failed")
        return AParentOut(
            name=data.output["name"],
            task_a_output=data.output["taskAOutput"],
            task_a1_output=c1.output,
            task_a2_output=c2.output,
        )

    @engine.parent_task(id="a", finalize=finalize_a)
    def task_a(ctx: RunContext, req: Name) -> Parent[dict[str, str]]:
        return Parent(
            output={"name": req.name, "taskAOutput": f"Hello from task A, {req.name}!"},
            children=[child(a1, req.name), child(a2, req.name)],
        )

    def finalize_b(ctx: RunContext, data: FinalizeInput[dict[str, str]]) -> dict[str, str]:
        c1, c2 = data.children
        if not (c1.ok and c2.ok and data.output):
            raise NonRetryableError("Children failed")
        return {**data.output, "taskB1Output": c1.output, "taskB2Output": c2.output}

    @engine.parent_task(id="b", finalize=finalize_b)
    def task_b(ctx: RunContext, req: AParentOut) -> Parent[dict[str, str]]:
        return Parent(
            output={
                "taskAOutput": req.task_a_output,
                "taskA1Output": req.task_a1_output,
                "taskA2Output": req.task_a2_output,
                "taskBOutput": f"Hello from task B, {req.name}!",
            },
            children=[child(b1, req.name), child(b2, req.name)],
        )

    seq = engine.sequence("seq", [task_a, task_b])

    async with engine:
        output = await (await seq.trigger(Name(name="world"))).result(timeout=10)

    assert output == {
        "taskAOutput": "Hello from task A, world!",
        "taskA1Output": "Hello from task A1, world!",
        "taskA2Output": "Hello from task A2, world!",
        "taskBOutput": "Hello from task B, world!",
        "taskB1Output": "Hello from task B1, world!",
        "taskB2Output": "Hello from task B2, world!",
    }


async def test_sequence_failure_at_step_i_is_finalize_failed_and_later_steps_never_run(
    engine: Engine,
) -> None:
    calls = Calls()

    @engine.task(id="inc")
    async def inc(ctx: RunContext, n: int) -> int:
        calls.hit("inc")
        return n + 1

    @engine.task(id="explode", retry=NO_RETRY)
    async def explode(ctx: RunContext, n: int) -> int:
        calls.hit("explode")
        raise ValueError(f"cannot handle {n}")

    @engine.task(id="never")
    async def never(ctx: RunContext, n: int) -> int:
        calls.hit("never")
        return n

    seq = engine.sequence("seq", [inc, explode, never])

    async with engine:
        handle = await seq.trigger(1)
        run = await handle.wait(timeout=10)
        steps = await engine.children(handle.id)
        never_runs = await runs_of(engine, "never")

    assert run.status is RunStatus.FINALIZE_FAILED
    assert run.error is not None
    assert run.error.type == "FinalizeFailedError"
    assert run.error.message == (
        "sequence 'seq' failed at step 1 (task 'explode'): the child ended failed: "
        "ValueError: cannot handle 2; later steps did not run"
    )
    assert calls == {"inc": 1, "explode": 1}
    assert [(s.task_id, s.status) for s in steps] == [
        ("inc", RunStatus.COMPLETED),
        ("explode", RunStatus.FAILED),
    ]
    assert never_runs == []


def test_sequence_with_mismatched_adjacent_types_is_rejected_at_definition(
    engine: Engine,
) -> None:
    @engine.task(id="to-text")
    async def to_text(ctx: RunContext, n: int) -> str:
        return str(n)

    @engine.task(id="square")
    async def square(ctx: RunContext, n: int) -> int:
        return n * n

    with pytest.raises(ConfigurationError) as info:
        engine.sequence("bad-seq", [square, to_text, square])
    assert str(info.value) == (
        "sequence 'bad-seq': step 1 ('to-text') returns str but step 2 ('square') takes int"
    )
    assert "bad-seq" not in engine.tasks  # nothing was defined
    with pytest.raises(InvalidOptionError):
        engine.sequence("empty-seq", [])


async def test_loop_repeats_until_a_value_appears(engine: Engine) -> None:
    state: dict[str, Any] = {"polls": 0, "value": None}

    @engine.task(id="iteration")
    async def iteration(ctx: RunContext) -> LoopResult[int]:
        state["polls"] += 1
        if state["polls"] == 3:
            state["value"] = 10  # the value shows up while the loop polls
        if state["value"] is None:
            return LoopResult(done=False)
        return LoopResult(done=True, output=state["value"])

    looping = engine.loop("looping", iteration, max_iterations=20, sleep=0.01)

    async with engine:
        handle = await looping.trigger(None)
        output = await handle.result(timeout=10)
        run = await handle.get()
        iterations = await engine.children(handle.id)
        nested = [await engine.children(i.id) for i in iterations]

    assert run.status is RunStatus.COMPLETED
    assert output == LoopOutput(success=True, output=10, iterations=3)
    assert [i.status for i in iterations] == [RunStatus.COMPLETED] * 3
    # Every iteration is a child of the loop run: the tree does not deepen per iteration.
    assert all(i.parent_id == handle.id for i in iterations)
    assert nested == [[], [], []]


async def test_loop_that_exhausts_its_iterations_completes_without_success(
    engine: Engine,
) -> None:
    calls = Calls()

    @engine.task(id="iteration")
    async def iteration(ctx: RunContext, target: int) -> LoopResult[int]:
        calls.hit("iteration")
        return LoopResult(done=False, output=target)

    looping = engine.loop("looping", iteration, max_iterations=4)

    async with engine:
        handle = await looping.trigger(7)
        output = await handle.result(timeout=10)
        iterations = await engine.children(handle.id)

    assert output == LoopOutput(success=False, output=None, iterations=4)
    assert calls["iteration"] == 4
    assert [i.input for i in iterations] == [7, 7, 7, 7]  # each gets the loop's input


async def test_loop_iteration_error_is_finalize_failed(engine: Engine) -> None:
    state = {"polls": 0}

    @engine.task(id="iteration", retry=NO_RETRY)
    async def iteration(ctx: RunContext) -> LoopResult[int]:
        state["polls"] += 1
        if state["polls"] == 2:
            raise RuntimeError("sensor offline")
        return LoopResult(done=False)

    looping = engine.loop("looping", iteration, max_iterations=5)

    async with engine:
        handle = await looping.trigger(None)
        run = await handle.wait(timeout=10)
        iterations = await engine.children(handle.id)

    assert run.status is RunStatus.FINALIZE_FAILED
    assert run.error is not None
    assert run.error.message == (
        "loop 'looping' failed at iteration 1 (task 'iteration'): the child ended failed: "
        "RuntimeError: sensor offline"
    )
    assert [i.status for i in iterations] == [RunStatus.COMPLETED, RunStatus.FAILED]


def test_loop_options_are_checked_at_definition(engine: Engine) -> None:
    @engine.task(id="iteration")
    async def iteration(ctx: RunContext) -> LoopResult[int]:
        return LoopResult(done=True, output=1)

    with pytest.raises(InvalidOptionError, match="max_iterations"):
        engine.loop("looping", iteration, max_iterations=0)
