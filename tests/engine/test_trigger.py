"""Triggering runs and reading their results: async and `def` tasks, typed inputs and
outputs, batches, tasks without input, and how fast a trigger starts."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # typing.TypedDict needs Python 3.12 in pydantic

from perdure import Engine, InputValidationError, RunContext, RunHandle, RunStatus

from .conftest import MakeEngine
from .support import types


class Order(BaseModel):
    sku: str
    quantity: int


class Receipt(BaseModel):
    sku: str
    total: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Pair(TypedDict):
    left: str
    right: int


async def test_async_task_trigger_result_get_and_wait(engine: Engine) -> None:
    @engine.task(id="add-one")
    async def add_one(ctx: RunContext, n: int) -> int:
        return n + 1

    async with engine:
        handle = await add_one.trigger(41)
        assert isinstance(handle, RunHandle)
        assert await handle.result(timeout=10) == 42
        run = await handle.get()
        finished = await handle.wait(timeout=10)

    assert run.id == handle.id
    assert run.task_id == "add-one"
    assert run.status is RunStatus.COMPLETED
    assert run.attempt == 1
    assert run.input == 41
    assert run.output == 42
    assert run.error is None
    assert run.queue == "default"
    assert run.created_at <= run.started_at <= run.finished_at  # type: ignore[operator]
    assert finished == run


async def test_def_task_runs_in_a_thread_and_returns_its_result(engine: Engine) -> None:
    main_thread = threading.get_ident()
    threads: list[int] = []

    @engine.task(id="shout")
    def shout(ctx: RunContext, text: str) -> str:
        threads.append(threading.get_ident())
        return text.upper()

    async with engine:
        handle = await shout.trigger("hello")
        assert await handle.result(timeout=10) == "HELLO"
        run = await handle.get()

    assert run.status is RunStatus.COMPLETED
    assert run.output == "HELLO"
    assert len(threads) == 1
    assert threads[0] != main_thread


async def test_pydantic_model_input_is_rehydrated_in_the_worker(engine: Engine) -> None:
    seen: list[object] = []

    @engine.task(id="price")
    async def price(ctx: RunContext, order: Order) -> Receipt:
        seen.append(order)
        return Receipt(sku=order.sku, total=order.quantity * 2.5)

    async with engine:
        from_model = await price.trigger(Order(sku="A-1", quantity=4))
        from_dict = await price.trigger({"sku": "B-2", "quantity": "2"})  # type: ignore[arg-type]
        receipt = await from_model.result(timeout=10)
        other = await from_dict.result(timeout=10)
        stored = await from_dict.get()

    assert all(isinstance(order, Order) for order in seen)
    assert {order.sku for order in seen} == {"A-1", "B-2"}  # type: ignore[attr-defined]
    assert isinstance(receipt, Receipt)
    assert receipt == Receipt(sku="A-1", total=10.0)
    assert other == Receipt(sku="B-2", total=5.0)
    # Stored as JSON, validated (and coerced) at trigger time.
    assert stored.input == {"sku": "B-2", "quantity": 2}
    assert stored.output == {"sku": "B-2", "total": 5.0}


async def test_dataclass_input_is_rehydrated_in_the_worker(engine: Engine) -> None:
    seen: list[object] = []

    @engine.task(id="norm")
    async def norm(ctx: RunContext, point: Point) -> Point:
        seen.append(point)
        return Point(x=abs(point.x), y=abs(point.y))

    async with engine:
        result = await (await norm.trigger(Point(x=-3, y=4))).result(timeout=10)

    assert len(seen) == 1
    assert isinstance(seen[0], Point)
    assert seen[0] == Point(x=-3, y=4)
    assert isinstance(result, Point)
    assert result == Point(x=3, y=4)


async def test_typeddict_input_is_rehydrated_in_the_worker(engine: Engine) -> None:
    seen: list[object] = []

    @engine.task(id="join")
    def join(ctx: RunContext, pair: Pair) -> str:
        seen.append(pair)
        return f"{pair['left']}={pair['right']}"

    async with engine:
        handle = await join.trigger({"left": "a", "right": 1})
        assert await handle.result(timeout=10) == "a=1"

    assert seen == [{"left": "a", "right": 1}]
    assert isinstance(seen[0], dict)


async def test_primitive_and_container_inputs_keep_their_declared_types(engine: Engine) -> None:
    seen: list[object] = []

    @engine.task(id="total")
    async def total(ctx: RunContext, values: list[float]) -> float:
        seen.append(values)
        return sum(values)

    @engine.task(id="flag")
    async def flag(ctx: RunContext, on: bool) -> bool:
        seen.append(on)
        return not on

    async with engine:
        assert await (await total.trigger([1, 2.5])).result(timeout=10) == 3.5
        assert await (await flag.trigger(True)).result(timeout=10) is False

    assert seen[0] == [1.0, 2.5]
    assert isinstance(seen[0], list)
    assert all(isinstance(v, float) for v in seen[0])  # type: ignore[attr-defined]
    assert seen[1] is True


async def test_task_taking_only_ctx(engine: Engine) -> None:
    calls: list[str] = []

    @engine.task(id="ping")
    async def ping(ctx: RunContext) -> str:
        calls.append(ctx.run_id)
        return "pong"

    async with engine:
        handle = await ping.trigger(None)
        assert await handle.result(timeout=10) == "pong"
        run = await handle.get()

    assert calls == [handle.id]
    assert run.input is None
    assert run.output == "pong"


async def test_ctx_describes_the_run(engine: Engine) -> None:
    seen: list[tuple[str, str, int, str]] = []

    @engine.task(id="introspect")
    async def introspect(ctx: RunContext, n: int) -> None:
        seen.append((ctx.run_id, ctx.task_id, ctx.attempt, ctx.worker_id))
        assert not ctx.cancelled
        assert not ctx.shutdown

    async with engine:
        handle = await introspect.trigger(1)
        await handle.result(timeout=10)
        assert seen == [(handle.id, "introspect", 1, engine.worker_id)]


async def test_batch_trigger_creates_every_run(engine: Engine) -> None:
    @engine.task(id="square")
    async def square(ctx: RunContext, n: int) -> int:
        return n * n

    async with engine:
        handles = await square.batch_trigger([1, 2, 3, 4])
        assert len({h.id for h in handles}) == 4
        results = [await h.result(timeout=10) for h in handles]
        page = await engine.list_runs(task_id="square")

    assert results == [1, 4, 9, 16]
    assert sorted(run.id for run in page.runs) == sorted(h.id for h in handles)
    assert all(run.status is RunStatus.COMPLETED for run in page.runs)


async def test_batch_trigger_with_one_invalid_input_stores_nothing(engine: Engine) -> None:
    @engine.task(id="square")
    async def square(ctx: RunContext, n: int) -> int:
        return n * n

    with pytest.raises(InputValidationError, match=r"input"):
        await square.batch_trigger([1, 2, "three"])  # type: ignore[list-item]
    assert (await engine.list_runs()).runs == []


async def test_batch_trigger_is_one_transaction(engine: Engine) -> None:
    """All runs of a batch appear together: created in one commit, with one `created`
    event each and the same options."""

    @engine.task(id="noop")
    async def noop(ctx: RunContext, n: int) -> None:
        return None

    handles = await noop.batch_trigger([1, 2, 3], priority=5, tags=["batch"])
    runs = [await h.get() for h in handles]
    assert all(run.status is RunStatus.QUEUED for run in runs)
    assert [run.input for run in runs] == [1, 2, 3]
    assert {run.priority for run in runs} == {5}
    assert all(run.tags == ["batch"] for run in runs)
    assert len({run.created_at for run in runs}) == 1  # one `now` for the whole commit
    for handle in handles:
        assert types(await handle.events()) == ["created"]


async def test_trigger_by_task_id_through_the_engine(engine: Engine) -> None:
    @engine.task(id="echo")
    async def echo(ctx: RunContext, text: str) -> str:
        return text

    async with engine:
        handle = await engine.trigger("echo", "hi")
        assert await handle.result(timeout=10) == "hi"
        other = engine.handle(handle.id)
        assert await other.result(timeout=10) == "hi"


async def test_a_trigger_in_the_same_process_starts_within_milliseconds(
    engine: Engine,
) -> None:
    @engine.task(id="quick")
    async def quick(ctx: RunContext) -> None:
        return None

    async with engine:
        # A first run warms the worker up; the second measures dispatch of a fresh trigger.
        await (await quick.trigger(None)).result(timeout=10)
        handle = await quick.trigger(None)
        await handle.result(timeout=10)
        run = await handle.get()

    assert run.started_at is not None
    assert (run.started_at - run.created_at).total_seconds() < 0.1


async def test_runs_wait_for_a_worker_then_complete(make_engine: MakeEngine) -> None:
    """Persist before acknowledging: a run triggered with no worker is stored `queued` and
    completes once a worker starts."""
    engine = make_engine()

    @engine.task(id="later")
    async def later(ctx: RunContext, n: int) -> int:
        return n * 10

    handle = await later.trigger(7)
    assert (await handle.get()).status is RunStatus.QUEUED
    async with engine:
        assert await handle.result(timeout=10) == 70
