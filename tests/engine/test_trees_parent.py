"""Parent tasks: children run in parallel, `finalize` sees every settled child (allSettled).

Ports the scenarios of the `durable-execution` README (reference 001): the nested tree, the
parent with and without finalize, failing children, partial success, and its throughput
cases (250 runs triggered at once, a 500-child fan-out).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from perdure import (
    Engine,
    FinalizeInput,
    NonRetryableError,
    Parent,
    RunContext,
    RunStatus,
    Task,
    child,
)

from .conftest import MakeEngine
from .durable.support import assert_contiguous
from .support import wait_for_status
from .trees.support import FAST_RETRY, NO_RETRY, Calls, Gate, runs_of, subtree


class BIn(BaseModel):
    name: str


class B1Out(BaseModel):
    name: str
    b1: str


class B2Out(BaseModel):
    name: str
    b1: str
    b2: str


class B3Out(BaseModel):
    b1: str
    b2: str
    b3: str


class Upload(BaseModel):
    file_path: str
    upload_url: str


def hello_task(engine: Engine, task_id: str) -> Task[str, str]:
    """`a1` → "Hello from task A1, {name}!" (the reference's leaf tasks)."""

    @engine.task(id=task_id, retry=NO_RETRY)
    async def hello(ctx: RunContext, name: str) -> str:
        return f"Hello from task {task_id.upper()}, {name}!"

    return hello


def define_nested_tree(engine: Engine) -> Task[str, Any]:
    """root → [a → (a1, a2, a3) with finalize, b = sequence(b1, b2, b3)], root finalize."""
    a1, a2, a3 = (hello_task(engine, f"a{i}") for i in (1, 2, 3))

    def finalize_a(ctx: RunContext, data: FinalizeInput[str]) -> dict[str, str]:
        if not all(c.ok for c in data.children):
            raise NonRetryableError("Children failed")
        c1, c2, c3 = data.children
        return {
            "taskAOutput": data.output or "",
            "taskA1Output": c1.output,
            "taskA2Output": c2.output,
            "taskA3Output": c3.output,
        }

    @engine.parent_task(id="a", finalize=finalize_a)
    def task_a(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(
            output=f"Hello from task A, {name}!",
            children=[child(a1, name), child(a2, name), child(a3, name)],
        )

    @engine.task(id="b1")
    async def b1(ctx: RunContext, req: BIn) -> B1Out:
        return B1Out(name=req.name, b1=f"Hello from task B1, {req.name}!")

    @engine.task(id="b2")
    async def b2(ctx: RunContext, req: B1Out) -> B2Out:
        return B2Out(name=req.name, b1=req.b1, b2=f"Hello from task B2, {req.name}!")

    @engine.task(id="b3")
    async def b3(ctx: RunContext, req: B2Out) -> B3Out:
        return B3Out(b1=req.b1, b2=req.b2, b3=f"Hello from task B3, {req.name}!")

    task_b = engine.sequence("b", [b1, b2, b3])

    def finalize_root(ctx: RunContext, data: FinalizeInput[str]) -> dict[str, str]:
        a_result, b_result = data.children
        if not (a_result.ok and b_result.ok):
            raise NonRetryableError("Children failed")
        b_out = b_result.output
        if not isinstance(b_out, B3Out):  # the sequence's output, rehydrated as its type
            raise NonRetryableError(f"expected B3Out, got {type(b_out).__name__}")
        return {
            "rootOutput": data.output or "",
            **a_result.output,
            "taskB1Output": b_out.b1,
            "taskB2Output": b_out.b2,
            "taskB3Output": b_out.b3,
        }

    @engine.parent_task(id="root", finalize=finalize_root)
    def root(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(
            output=f"Hello from root task, {name}!",
            children=[child(task_a, name), child(task_b, BIn(name=name))],
        )

    return root


async def test_nested_tree_of_parents_and_a_sequence(engine: Engine) -> None:
    root = define_nested_tree(engine)
    async with engine:
        handle = await root.trigger("world")
        output = await handle.result(timeout=20)
        run = await handle.get()
        tree = await subtree(engine, handle.id)

    assert run.status is RunStatus.COMPLETED
    assert output == {
        "rootOutput": "Hello from root task, world!",
        "taskAOutput": "Hello from task A, world!",
        "taskA1Output": "Hello from task A1, world!",
        "taskA2Output": "Hello from task A2, world!",
        "taskA3Output": "Hello from task A3, world!",
        "taskB1Output": "Hello from task B1, world!",
        "taskB2Output": "Hello from task B2, world!",
        "taskB3Output": "Hello from task B3, world!",
    }
    # Depth first, children in creation order: the sequence's steps ran one after another.
    assert [r.task_id for r in tree] == ["a", "a1", "a2", "a3", "b", "b1", "b2", "b3"]
    assert all(r.status is RunStatus.COMPLETED for r in tree)
    assert all(r.root_id == handle.id for r in tree)


async def test_parent_without_finalize_outputs_its_output_and_every_child_result(
    engine: Engine,
) -> None:
    task_a, task_b = hello_task(engine, "a"), hello_task(engine, "b")

    @engine.parent_task(id="parent")
    def parent(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(
            output=f"Hello from parent task, {name}!",
            children=[child(task_a, name), child(task_b, name)],
        )

    async with engine:
        handle = await parent.trigger("world")
        output = await handle.result(timeout=10)
        kids = await engine.children(handle.id)

    assert output == {
        "output": "Hello from parent task, world!",
        "children": [
            {
                "status": "completed",
                "output": "Hello from task A, world!",
                "error": None,
                "run_id": kids[0].id,
                "task_id": "a",
            },
            {
                "status": "completed",
                "output": "Hello from task B, world!",
                "error": None,
                "run_id": kids[1].id,
                "task_id": "b",
            },
        ],
    }


async def test_finalize_combines_the_parent_output_and_the_children(engine: Engine) -> None:
    task_a, task_b = hello_task(engine, "a"), hello_task(engine, "b")

    def finalize(ctx: RunContext, data: FinalizeInput[str]) -> dict[str, str]:
        c1, c2 = data.children
        if c1.status is not RunStatus.COMPLETED or c2.status is not RunStatus.COMPLETED:
            raise NonRetryableError("Children failed")
        return {
            "parentOutput": data.output or "",
            "taskAOutput": c1.output,
            "taskBOutput": c2.output,
        }

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(
            output=f"Hello from parent task, {name}!",
            children=[child(task_a, name), child(task_b, name)],
        )

    async with engine:
        handle = await parent.trigger("world")
        output = await handle.result(timeout=10)

    assert output == {
        "parentOutput": "Hello from parent task, world!",
        "taskAOutput": "Hello from task A, world!",
        "taskBOutput": "Hello from task B, world!",
    }


def define_failing_pair(engine: Engine) -> tuple[Task[str, str], Task[None, str]]:
    task_a = hello_task(engine, "a")

    @engine.task(id="b", retry=NO_RETRY)
    async def task_b(ctx: RunContext) -> str:
        raise RuntimeError("Failed")

    return task_a, task_b


async def test_a_failing_child_and_a_finalize_that_checks_statuses_is_finalize_failed(
    engine: Engine,
) -> None:
    task_a, task_b = define_failing_pair(engine)
    seen: list[list[RunStatus]] = []

    def finalize(ctx: RunContext, data: FinalizeInput[str]) -> dict[str, Any]:
        seen.append([c.status for c in data.children])
        if not all(c.ok for c in data.children):
            raise NonRetryableError("Children failed")
        return {}

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(output=name, children=[child(task_a, name), child(task_b, None)])

    async with engine:
        handle = await parent.trigger("world")
        run = await handle.wait(timeout=10)

    assert run.status is RunStatus.FINALIZE_FAILED
    assert run.error is not None
    assert run.error.type == "FinalizeFailedError"
    assert (
        run.error.message
        == "finalize of parent 'parent' failed: NonRetryableError: Children failed"
    )
    assert run.error.retryable is False
    assert run.attempt == 2  # ran its function, then resumed once: finalize was not retried
    assert seen == [[RunStatus.COMPLETED, RunStatus.FAILED]]  # allSettled: failed one included


async def test_partial_success_finalize_reports_failed_children(engine: Engine) -> None:
    task_a, task_b = define_failing_pair(engine)

    def finalize(ctx: RunContext, data: FinalizeInput[str]) -> dict[str, Any]:
        results = [
            {
                "index": i,
                "success": c.ok,
                "result": c.output if c.ok else (c.error.message if c.error else None),
            }
            for i, c in enumerate(data.children)
        ]
        return {
            "parentOutput": data.output,
            "successfulCount": sum(1 for r in results if r["success"]),
            "totalCount": len(data.children),
            "results": results,
        }

    @engine.parent_task(id="resilientParent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[str]:
        return Parent(
            output=f"Hello from parent task, {name}!",
            children=[child(task_a, name), child(task_b, None)],
        )

    async with engine:
        output = await (await parent.trigger("world")).result(timeout=10)

    assert output == {
        "parentOutput": "Hello from parent task, world!",
        "successfulCount": 1,
        "totalCount": 2,
        "results": [
            {"index": 0, "success": True, "result": "Hello from task A, world!"},
            {"index": 1, "success": False, "result": "Failed"},
        ],
    }


async def test_a_finalize_function_that_always_fails_is_finalize_failed(engine: Engine) -> None:
    task_a = hello_task(engine, "a")
    calls = Calls()

    def finalize(ctx: RunContext, data: FinalizeInput[None]) -> str:
        calls.hit("finalize")
        raise ValueError("finalize is broken")

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(task_a, name)])

    async with engine:
        handle = await parent.trigger("world")
        run = await handle.wait(timeout=10)
        kids = await engine.children(handle.id)

    assert run.status is RunStatus.FINALIZE_FAILED
    assert run.error is not None
    assert run.error.type == "FinalizeFailedError"
    assert run.error.message == "finalize of parent 'parent' failed: ValueError: finalize is broken"
    assert run.error.retryable is False
    assert calls["finalize"] == 1
    assert [k.status for k in kids] == [RunStatus.COMPLETED]


async def test_finalize_task_runs_while_the_parent_is_waiting_for_finalize(
    engine: Engine,
) -> None:
    extract = hello_task(engine, "extractFileTitle")
    summarize = hello_task(engine, "summarizeFile")
    gate = Gate()

    @engine.task(id="uploadFileFinalize", retry=NO_RETRY)
    async def finalize(ctx: RunContext, data: FinalizeInput[Upload]) -> dict[str, Any]:
        await gate.wait()
        assert data.output is not None  # rehydrated from the parent's Parent[Upload]
        title, summary = data.children
        return {
            "filePath": data.output.file_path,
            "uploadUrl": data.output.upload_url,
            "title": title.output,
            "summary": summary.output,
        }

    @engine.parent_task(id="uploadFile", finalize=finalize)
    def upload(ctx: RunContext, req: Upload) -> Parent[Upload]:
        return Parent(
            output=req,
            children=[child(extract, req.file_path), child(summarize, req.file_path)],
        )

    async with engine:
        handle = await upload.trigger(
            Upload(file_path="file.txt", upload_url="https://example.com/upload")
        )
        await gate.wait_entered(1)
        waiting = await wait_for_status(engine, handle.id, RunStatus.WAITING_FOR_FINALIZE)
        kids = await engine.children(handle.id)
        gate.open()
        output = await handle.result(timeout=10)
        finalize_run = await engine.get_run(kids[-1].id)

    assert waiting.status is RunStatus.WAITING_FOR_FINALIZE
    assert [k.task_id for k in kids] == ["extractFileTitle", "summarizeFile", "uploadFileFinalize"]
    assert [k.status for k in kids[:2]] == [RunStatus.COMPLETED] * 2
    assert kids[2].status is RunStatus.RUNNING
    assert finalize_run.status is RunStatus.COMPLETED
    assert finalize_run.parent_id == handle.id
    assert output == {
        "filePath": "file.txt",
        "uploadUrl": "https://example.com/upload",
        "title": "Hello from task EXTRACTFILETITLE, file.txt!",
        "summary": "Hello from task SUMMARIZEFILE, file.txt!",
    }


async def test_a_failing_finalize_task_makes_the_parent_finalize_failed(engine: Engine) -> None:
    task_a = hello_task(engine, "a")

    @engine.task(id="finalize-task", retry=NO_RETRY)
    async def finalize(ctx: RunContext, data: FinalizeInput[None]) -> str:
        raise NonRetryableError("cannot combine")

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(task_a, name)])

    async with engine:
        handle = await parent.trigger("world")
        run = await handle.wait(timeout=10)
        kids = await engine.children(handle.id)
        events = await handle.events()

    assert run.status is RunStatus.FINALIZE_FAILED
    # Woken again to fail: only a completed finalize task completes the parent by itself.
    assert run.attempt == 3
    assert [e.type for e in events].count("resumed") == 2
    assert_contiguous(events)
    assert run.error is not None
    assert run.error.message == (
        "finalize task 'finalize-task' of parent 'parent' ended failed: "
        "NonRetryableError: cannot combine"
    )
    assert [(k.task_id, k.status) for k in kids] == [
        ("a", RunStatus.COMPLETED),
        ("finalize-task", RunStatus.FAILED),
    ]


async def test_250_parents_triggered_at_once_all_complete(engine: Engine) -> None:
    @engine.task(id="double")
    async def double(ctx: RunContext, n: int) -> int:
        return 2 * n

    def total(ctx: RunContext, data: FinalizeInput[int]) -> int:
        return (data.output or 0) + sum(c.output for c in data.children)

    @engine.parent_task(id="pair", finalize=total)
    def pair(ctx: RunContext, n: int) -> Parent[int]:
        return Parent(output=n, children=[child(double, n), child(double, n + 1)])

    async with engine:
        handles = await asyncio.gather(*(pair.trigger(i) for i in range(250)))
        outputs = [await h.result(timeout=30) for h in handles]
        doubles = await runs_of(engine, "double")

    assert outputs == [i + 2 * i + 2 * (i + 1) for i in range(250)]
    assert len(doubles) == 500
    assert all(r.status is RunStatus.COMPLETED for r in doubles)


async def test_retry_then_success_inside_a_tree(engine: Engine) -> None:
    calls = Calls()

    @engine.task(id="a", retry=FAST_RETRY)
    async def flaky(ctx: RunContext, name: str) -> dict[str, Any]:
        calls.hit("a")
        if ctx.attempt < 3:
            raise RuntimeError("Failed")
        return {"totalAttempts": calls["a"], "output": f"Hello, {name}!"}

    def finalize(ctx: RunContext, data: FinalizeInput[None]) -> Any:
        return data.children[0].output

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(flaky, name)])

    async with engine:
        handle = await parent.trigger("world")
        output = await handle.result(timeout=10)
        (kid,) = await engine.children(handle.id)
        events = await handle.events()

    assert output == {"totalAttempts": 3, "output": "Hello, world!"}
    assert kid.status is RunStatus.COMPLETED
    assert kid.attempt == 3
    # Settled once, not on each failed attempt.
    assert [e.data["children"] for e in events if e.type == "children_settled"] == [
        [{"child_run_id": kid.id, "status": "completed"}]
    ]


async def test_500_children_fan_out_and_come_back_in_order(engine: Engine) -> None:
    @engine.task(id="add1")
    async def add1(ctx: RunContext, n: int) -> int:
        await asyncio.sleep(0.001 * (n % 3))  # finish out of order
        return n + 1

    def collect(ctx: RunContext, data: FinalizeInput[None]) -> list[int]:
        return [c.output for c in data.children]

    @engine.parent_task(id="fan-out", finalize=collect)
    def fan_out(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(add1, i) for i in range(n)])

    async with engine:
        handle = await fan_out.trigger(500)
        output = await handle.result(timeout=30)
        kids = await engine.children(handle.id)

    assert output == list(range(1, 501))
    assert [k.input for k in kids] == list(range(500))  # engine.children: creation order


async def test_each_child_and_the_parent_function_run_exactly_once(engine: Engine) -> None:
    calls = Calls()

    @engine.task(id="work")
    async def work(ctx: RunContext, n: int) -> int:
        calls.hit(f"child-{n}")
        return n

    def finalize(ctx: RunContext, data: FinalizeInput[None]) -> int:
        calls.hit("finalize")
        return sum(c.output for c in data.children)

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        calls.hit("parent")
        return Parent(children=[child(work, i) for i in range(n)])

    async with engine:
        handle = await parent.trigger(10)
        output = await handle.result(timeout=10)
        run = await handle.get()
        kids = await engine.children(handle.id)

    assert output == 45
    assert calls == {"parent": 1, "finalize": 1, **{f"child-{i}": 1 for i in range(10)}}
    assert len(kids) == 10
    assert all(k.attempt == 1 for k in kids)
    assert run.attempt == 2  # the body ran twice (start, resume); the function once


async def test_parent_and_root_ids_through_three_levels(engine: Engine) -> None:
    leaf = hello_task(engine, "leaf")

    @engine.parent_task(id="mid")
    def mid(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(leaf, name)])

    @engine.parent_task(id="top")
    def top(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(mid, name)])

    async with engine:
        handle = await top.trigger("world")
        await handle.result(timeout=10)
        root = await handle.get()
        (middle,) = await engine.children(root.id)
        (bottom,) = await engine.children(middle.id)

    assert (root.parent_id, root.root_id) == (None, root.id)
    assert (middle.task_id, middle.parent_id, middle.root_id) == ("mid", root.id, root.id)
    assert (bottom.task_id, bottom.parent_id, bottom.root_id) == ("leaf", middle.id, root.id)
    assert bottom.output == "Hello from task LEAF, world!"


async def test_children_in_creation_order_and_child_events_in_the_parent_history(
    engine: Engine,
) -> None:
    tasks = [hello_task(engine, name) for name in ("c", "a", "b")]

    @engine.parent_task(id="parent")
    def parent(ctx: RunContext, name: str) -> Parent[None]:
        return Parent(children=[child(t, f"{name}-{i}") for i, t in enumerate(tasks)])

    async with engine:
        handle = await parent.trigger("x")
        await handle.result(timeout=10)
        kids = await engine.children(handle.id)
        events = await handle.events()

    assert [(k.task_id, k.input) for k in kids] == [("c", "x-0"), ("a", "x-1"), ("b", "x-2")]
    # One event for the whole batch of child waits, each child named in it.
    [recorded] = [e.data for e in events if e.type == "children_recorded"]
    assert (recorded["batch"], recorded["count"]) == (1, 3)
    assert [(c["position"], c["name"], c["child_run_id"]) for c in recorded["children"]] == [
        (1, "c", kids[0].id),
        (2, "a", kids[1].id),
        (3, "b", kids[2].id),
    ]
    # Children settled in one commit are one event of the parent; every child is in one.
    settled = [c for e in events if e.type == "children_settled" for c in e.data["children"]]
    assert sorted(c["child_run_id"] for c in settled) == sorted(k.id for k in kids)
    assert {c["status"] for c in settled} == {"completed"}
    suspended = [e.data for e in events if e.type == "suspended"]
    assert [d["status"] for d in suspended] == ["waiting_for_children"]
    resumed = [e.data for e in events if e.type == "resumed"]
    assert [d["reason"] for d in resumed] == ["children settled"]  # once, for the whole batch
    assert_contiguous(events)


async def test_parent_is_waiting_for_children_while_they_run(engine: Engine) -> None:
    gate = Gate()

    @engine.task(id="blocked")
    async def blocked(ctx: RunContext, n: int) -> int:
        await gate.wait()
        return n

    @engine.parent_task(id="parent")
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(blocked, i) for i in range(n)])

    async with engine:
        handle = await parent.trigger(3)
        await gate.wait_entered(3)
        waiting = await wait_for_status(engine, handle.id, RunStatus.WAITING_FOR_CHILDREN)
        kids = await engine.children(handle.id)
        gate.open()
        run = await handle.wait(timeout=10)

    assert waiting.lease_owner is None  # holds no slot while it waits
    assert [k.status for k in kids] == [RunStatus.RUNNING] * 3
    assert run.status is RunStatus.COMPLETED


async def test_the_parent_finishes_promptly_after_its_last_child(
    make_engine: MakeEngine,
) -> None:
    # Polling every 5 s could not make the parent this prompt: the wake-up in the transaction
    # that settles the last child does. The median of 5 trees tolerates a stall of the
    # machine (the bound is generous: a few transactions happen in between).
    engine = make_engine(poll_interval=5.0)
    leaf = hello_task(engine, "leaf")

    def finalize(ctx: RunContext, data: FinalizeInput[None]) -> int:
        return len(data.children)

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, str(i)) for i in range(n)])

    lags: list[float] = []
    async with engine:
        for _ in range(5):
            handle = await parent.trigger(3)
            assert await handle.result(timeout=10) == 3
            run = await handle.get()
            kids = await engine.children(handle.id)
            last_child = max(k.finished_at for k in kids if k.finished_at is not None)
            assert run.finished_at is not None
            lags.append((run.finished_at - last_child).total_seconds())

    assert all(lag >= 0 for lag in lags)
    median = sorted(lags)[2]
    assert median < 0.1, f"parents finished {[round(lag * 1000) for lag in lags]} ms after"


async def test_finalize_function_gets_the_parent_output_as_its_declared_type(
    engine: Engine,
) -> None:
    seen: list[object] = []
    leaf = hello_task(engine, "leaf")

    def finalize(ctx: RunContext, data: FinalizeInput[Upload]) -> str:
        seen.append(data.output)
        return data.children[0].output

    @engine.parent_task(id="parent", finalize=finalize)
    def parent(ctx: RunContext, req: Upload) -> Parent[Upload]:
        return Parent(output=req, children=[child(leaf, req.file_path)])

    upload = Upload(file_path="a.txt", upload_url="https://example.com/u")
    async with engine:
        output = await (await parent.trigger(upload)).result(timeout=10)

    assert output == "Hello from task LEAF, a.txt!"
    assert seen == [upload]  # rehydrated from `-> Parent[Upload]`, not the recorded dict
