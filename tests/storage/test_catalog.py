"""The task catalog workers register: id, queue, limits, version and JSON schemas."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from perdure.core.clock import to_datetime
from perdure.core.models import TaskInfo
from perdure.storage import Storage
from tests.storage.factories import T0

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


def task(task_id: str, **changes: Any) -> TaskInfo:
    base = TaskInfo(
        task_id=task_id,
        queue="default",
        max_attempts=3,
        timeout=30.0,
        version="1",
        input_schema=SCHEMA,
        output_schema=None,
    )
    return replace(base, **changes)


async def test_register_then_get_and_list(storage: Storage) -> None:
    await storage.register_tasks([task("b"), task("a", queue="images", timeout=None)], T0)

    got = await storage.get_task("a")
    assert got == task("a", queue="images", timeout=None, updated_at=to_datetime(T0))
    assert [t.task_id for t in await storage.list_tasks()] == ["a", "b"]
    assert (await storage.list_tasks())[1].input_schema == SCHEMA


async def test_registering_again_updates_the_entry(storage: Storage) -> None:
    await storage.register_tasks([task("a")], T0)

    await storage.register_tasks([task("a", version="2", max_attempts=7, output_schema={})], T0 + 1)

    got = await storage.get_task("a")
    assert got is not None
    assert (got.version, got.max_attempts, got.output_schema) == ("2", 7, {})
    assert got.updated_at == to_datetime(T0 + 1)
    assert len(await storage.list_tasks()) == 1


async def test_an_unknown_task_is_none(storage: Storage) -> None:
    assert await storage.get_task("nope") is None
    assert await storage.list_tasks() == []
    await storage.register_tasks([], T0)
    assert await storage.list_tasks() == []
