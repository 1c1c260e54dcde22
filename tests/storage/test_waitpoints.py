"""Child waits: a suspended parent wakes once its whole batch of children has settled,
however the children's completions interleave (two workers finishing siblings at once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from perdure.core.models import StepRecord
from perdure.core.statuses import RunStatus
from perdure.storage import Storage
from perdure.storage.steps import Fence
from tests.storage.factories import T0, claim, completed, create_one, get, new_run


async def suspended_parent_with_children(storage: Storage, n: int) -> tuple[str, list[str]]:
    """A parent suspended on a batch of `n` children; returns (parent id, child ids)."""
    await create_one(storage, task_id="parent")
    [parent] = await claim(storage, "parent-worker", task_ids=["parent"])
    fence = Fence(parent.id, parent.attempt, "parent-worker")
    children = [new_run(task_id="child", parent_id=parent.id, root_id=parent.id) for _ in range(n)]
    steps = [
        StepRecord(
            run_id=parent.id,
            position=i,
            kind="child",
            name="child",
            status="pending",
            child_run_id=child.id,
            batch=0,
            attempt=parent.attempt,
        )
        for i, child in enumerate(children)
    ]
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
