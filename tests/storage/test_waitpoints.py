"""Child waits: a suspended parent wakes once its whole batch of children has settled,
however the children's completions interleave (two workers finishing siblings at once)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

from perdure.core.errors import DuplicateRunError
from perdure.core.models import NewRun, Run, StepRecord
from perdure.core.statuses import RunStatus
from perdure.storage import Storage
from perdure.storage.steps import Fence, Spawn
from tests.storage.factories import (
    T0,
    claim,
    completed,
    create,
    create_one,
    event_types,
    get,
    new_run,
)


def child_wait(
    parent: Run, position: int, kid: NewRun, batch: int = 0, attempt: int | None = None
) -> StepRecord:
    """The parent's record of a wait for `kid` (`attempt`: the parent's, by default)."""
    return StepRecord(
        run_id=parent.id,
        position=position,
        kind="child",
        name="child",
        status="pending",
        child_run_id=kid.id,
        batch=batch,
        attempt=parent.attempt if attempt is None else attempt,
    )


async def suspended_parent_with_children(storage: Storage, n: int) -> tuple[str, list[str]]:
    """A parent suspended on a batch of `n` children; returns (parent id, child ids)."""
    await create_one(storage, task_id="parent")
    [parent] = await claim(storage, "parent-worker", task_ids=["parent"])
    fence = Fence(parent.id, parent.attempt, "parent-worker")
    children = [new_run(task_id="child", parent_id=parent.id, root_id=parent.id) for _ in range(n)]
    steps = [child_wait(parent, i, child) for i, child in enumerate(children)]
    assert await storage.record_steps(fence, steps, T0, children=children)
    assert await storage.suspend(fence, list(range(n)), None, T0)
    return parent.id, [c.id for c in children]


async def test_the_parent_wakes_only_when_every_child_settled(storage: Storage) -> None:
    parent_id, _ = await suspended_parent_with_children(storage, 2)
    first, second = await claim(storage, "w", task_ids=["child"], limit=2)

    await storage.finish_attempts("w", [completed(first)], T0 + 1)
    assert (await get(storage, parent_id)).available_at is None
    await storage.finish_attempts("w", [completed(second)], T0 + 2)

    parent = await get(storage, parent_id)
    assert parent.status is RunStatus.SUSPENDED
    assert parent.available_at is not None
    [resumed] = await claim(storage, "parent-worker-2", task_ids=["parent"], now=T0 + 10)
    assert resumed.id == parent_id


async def test_children_settle_their_parent_whether_or_not_their_outcome_names_it(
    storage: Storage,
) -> None:
    # PostgreSQL commits a batch whose outcomes settle no parent in one statement, and leaves
    # the runs that do to a transaction: an outcome that does not name its parent (as the
    # factories' do not) must still settle it, in the same call.
    parent_id, _ = await suspended_parent_with_children(storage, 2)
    await create_one(storage, task_id="root")
    first, second = await claim(storage, "w", task_ids=["child"], limit=2)
    [root] = await claim(storage, "w", task_ids=["root"])
    named = dataclasses.replace(completed(first), parent_id=parent_id)

    unnamed = await storage.finish_attempts("w", [completed(root), completed(second)], T0 + 1)
    assert (await get(storage, parent_id)).available_at is None  # one child left
    assert await storage.finish_attempts("w", [named], T0 + 2) == [True]

    assert unnamed == [True, True]
    assert (await get(storage, root.id)).status is RunStatus.COMPLETED
    assert (await get(storage, second.id)).status is RunStatus.COMPLETED
    assert (await get(storage, parent_id)).available_at is not None  # both settled: woken
    assert await event_types(storage, root.id) == ["created", "attempt_started", "completed"]


async def test_siblings_finishing_at_once_still_wake_the_parent(
    storage: Storage, other_storage: Callable[[], AbstractAsyncContextManager[Storage]]
) -> None:
    """On PostgreSQL each sibling's transaction must see the other's settled waitpoint, or
    neither wakes the parent (READ COMMITTED snapshots); repeated to make the race likely."""
    async with other_storage() as other:
        for round_ in range(8):
            parent_id, _ = await suspended_parent_with_children(storage, 2)
            [a] = await claim(storage, "wa", task_ids=["child"], limit=1)
            [b] = await claim(other, "wb", task_ids=["child"], limit=1)

            await asyncio.gather(
                storage.finish_attempts("wa", [completed(a)], T0 + 1),
                other.finish_attempts("wb", [completed(b)], T0 + 1),
            )

            parent = await get(storage, parent_id)
            assert parent.available_at is not None, f"round {round_}: the parent never woke"


def spawn_of(parent: Run, worker: str, n: int, *, attempt: int | None = None) -> Spawn:
    """A tree node's wait on `n` new children (`attempt`: a stale attempt number)."""
    fence = Fence(parent.id, parent.attempt if attempt is None else attempt, worker)
    children = [new_run(task_id="child", parent_id=parent.id, root_id=parent.id) for _ in range(n)]
    steps = [
        child_wait(parent, i, child, attempt=fence.attempt) for i, child in enumerate(children)
    ]
    return Spawn(fence, steps, children, [], RunStatus.WAITING_FOR_CHILDREN)


async def test_a_group_of_spawns_suspends_each_fenced_parent_with_its_children(
    storage: Storage,
) -> None:
    await create(storage, new_run(task_id="parent"), new_run(task_id="parent"))
    a, b = await claim(storage, "w", task_ids=["parent"], limit=2)

    applied = await storage.suspend_with_children(
        [spawn_of(a, "w", 2), spawn_of(b, "w", 1, attempt=b.attempt + 1)], T0 + 1
    )

    assert applied == [True, False]
    waiting, stale = await get(storage, a.id), await get(storage, b.id)
    assert (waiting.status, waiting.lease_owner, waiting.available_at) == (
        RunStatus.WAITING_FOR_CHILDREN,
        None,
        None,
    )
    assert (await event_types(storage, a.id))[-2:] == ["children_recorded", "suspended"]
    kids = await storage.list_runs(parent_id=a.id)
    assert len(kids.runs) == 2
    assert [await event_types(storage, kid.id) for kid in kids.runs] == [["created"]] * 2
    # The stale attempt wrote nothing: its run still runs, with no children.
    assert (stale.status, stale.lease_owner) == (RunStatus.RUNNING, "w")
    assert (await storage.list_runs(parent_id=b.id)).runs == []

    first, second = await claim(storage, "w2", task_ids=["child"], limit=2, now=T0 + 2)
    await storage.finish_attempts("w2", [completed(first), completed(second)], T0 + 3)
    assert (await get(storage, a.id)).available_at is not None  # its batch settled: woken


async def test_load_steps_of_several_runs_reads_each_history_in_order(storage: Storage) -> None:
    await create(storage, new_run(task_id="parent"), new_run(task_id="parent"))
    a, b = await claim(storage, "w", task_ids=["parent"], limit=2)
    spawn_a, spawn_b = spawn_of(a, "w", 3), spawn_of(b, "w", 1)
    assert await storage.suspend_with_children([spawn_a, spawn_b], T0 + 1) == [True, True]

    found = await storage.load_steps_of([b.id, a.id, "run_nothing_recorded"])

    assert set(found) == {a.id, b.id}
    assert found[a.id] == await storage.load_steps(a.id)
    assert [s.position for s in found[a.id]] == [0, 1, 2]
    assert [s.child_run_id for s in found[b.id]] == [spawn_b.children[0].id]


async def test_a_stale_and_a_current_attempt_of_one_run_in_one_group(storage: Storage) -> None:
    """Only the current attempt's spawn applies; the stale one's children are not created."""
    await create(storage, new_run(task_id="parent"))
    [run] = await claim(storage, "w", task_ids=["parent"])
    stale, current = spawn_of(run, "w", 1, attempt=run.attempt - 1), spawn_of(run, "w", 2)

    assert await storage.suspend_with_children([stale, current], T0 + 1) == [False, True]
    kids = (await storage.list_runs(parent_id=run.id)).runs
    assert sorted(k.id for k in kids) == sorted(c.id for c in current.children)


async def test_a_taken_token_id_rolls_back_the_whole_group(storage: Storage) -> None:
    """The engine then commits each spawn of the group alone, so only the one that takes
    the token fails (tests/engine/test_trees_sleeping.py)."""
    await create(storage, new_run(task_id="parent"), new_run(task_id="parent"))
    a, b = await claim(storage, "w", task_ids=["parent"], limit=2)
    sleeper = new_run(task_id="sleeper")
    assert await storage.create_run_with_steps(sleeper, [token_step(sleeper.id)], T0)
    clash = spawn_of(b, "w", 1)
    clash = dataclasses.replace(clash, child_steps=[token_step(clash.children[0].id)])

    with pytest.raises(DuplicateRunError, match="'sleep:t:1' already belongs"):
        await storage.suspend_with_children([spawn_of(a, "w", 1), clash], T0 + 1)

    for parent in (a, b):  # nothing of either spawn was written
        assert (await get(storage, parent.id)).status is RunStatus.RUNNING
        assert (await storage.list_runs(parent_id=parent.id)).runs == []


def token_step(run_id: str) -> StepRecord:
    return StepRecord(
        run_id=run_id,
        position=0,
        kind="token",
        name="token",
        status="pending",
        token_id="sleep:t:1",
        batch=0,
    )


async def test_a_batch_of_child_waits_is_one_event_and_each_commit_settling_children_one_more(
    storage: Storage,
) -> None:
    await create_one(storage, task_id="parent")
    [parent] = await claim(storage, "w", task_ids=["parent"])
    fence = Fence(parent.id, parent.attempt, "w")
    kids = [new_run(task_id="child", parent_id=parent.id, root_id=parent.id) for _ in range(3)]

    step = StepRecord(
        run_id=parent.id,
        position=0,
        kind="step",
        name="a",
        status="completed",
        output=1,
        attempt=parent.attempt,
    )
    # Two batches in one write: each is its own event.
    waits = [child_wait(parent, 1, kids[0], 1), child_wait(parent, 2, kids[1], 1)]
    steps = [step, *waits, child_wait(parent, 3, kids[2], 3)]
    assert await storage.record_steps(fence, steps, T0, children=kids)
    assert await storage.suspend(fence, [1, 2, 3], None, T0)
    first, second, third = await claim(storage, "w2", task_ids=["child"], limit=3, now=T0 + 1)
    await storage.finish_attempts("w2", [completed(first), completed(second)], T0 + 2)
    await storage.finish_attempts("w2", [completed(third)], T0 + 3)

    events = await storage.get_events(parent.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # contiguous
    recorded = [e.data for e in events if e.type == "children_recorded"]
    assert [(d["batch"], d["count"]) for d in recorded] == [(1, 2), (3, 1)]
    assert [[c["child_run_id"] for c in d["children"]] for d in recorded] == [
        [kids[0].id, kids[1].id],
        [kids[2].id],
    ]
    assert [c["position"] for c in recorded[0]["children"]] == [1, 2]
    settled = [e.data for e in events if e.type == "children_settled"]
    assert [d["count"] for d in settled] == [2, 1]
    assert {c["child_run_id"] for d in settled for c in d["children"]} == {k.id for k in kids}
    assert {c["status"] for d in settled for c in d["children"]} == {"completed"}
    assert [e.type for e in events].count("step_recorded") == 1
