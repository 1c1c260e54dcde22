"""Limits of task trees, with errors that say what to change: children per parent
(`max_children`), child input type and size (`max_payload_bytes`), finalize task input.
A tree that breaks one fails at once: the same children would be refused on every retry."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from perdure import (
    InputValidationError,
    Parent,
    PayloadTooLargeError,
    RetryPolicy,
    RunContext,
    RunStatus,
    child,
)

from .conftest import MakeEngine
from .trees.support import runs_of

RETRIES = RetryPolicy(max_attempts=3, base_delay=0.01)


class Order(BaseModel):
    item: str
    quantity: int


async def test_more_children_than_max_children_fails_the_parent(make_engine: MakeEngine) -> None:
    engine = make_engine(max_children=5)

    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    @engine.parent_task(id="fan-out", retry=RETRIES)
    def fan_out(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, i) for i in range(n)])

    async with engine:
        too_many = await fan_out.trigger(6)
        run = await too_many.wait(timeout=10)
        at_limit = await (await fan_out.trigger(5)).result(timeout=10)
        leaves = await runs_of(engine, "leaf")

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1  # not retried
    assert run.error is not None
    assert run.error.retryable is False
    assert run.error.message == (
        "parent task 'fan-out' returned 6 children; the limit is 5 per parent "
        "(engine option max_children)"
    )
    assert len(at_limit["children"]) == 5
    assert len(leaves) == 5  # only the run at the limit created children


async def test_batch_trigger_and_wait_over_max_children_fails_without_retry(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(max_children=3)

    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="durable-parent", retry=RETRIES)
    async def parent(ctx: RunContext, n: int) -> int:
        results = await leaf.batch_trigger_and_wait(list(range(n)))
        return len(results)

    async with engine:
        run = await (await parent.trigger(4)).wait(timeout=10)

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert "the limit is 3 (engine option max_children)" in run.error.message


async def test_child_input_that_does_not_validate_fails_the_parent(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()

    @engine.task(id="ship")
    async def ship(ctx: RunContext, order: Order) -> str:
        return order.item

    @engine.parent_task(id="shipments", retry=RETRIES)
    def shipments(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(
            children=[
                child(ship, Order(item="pen", quantity=1)),
                child(ship, {"item": "book", "quantity": "many"}),  # type: ignore[arg-type]
            ]
        )

    async with engine:
        run = await (await shipments.trigger(2)).wait(timeout=10)
        ships = await runs_of(engine, "ship")

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.type == "NonRetryableError"
    assert run.error.retryable is False
    message = run.error.message
    assert message.startswith("parent task 'shipments', child 1: invalid input for task 'ship'")
    assert "quantity" in message
    assert ships == []  # no child was created: all or none


async def test_oversized_input_is_refused(make_engine: MakeEngine) -> None:
    engine = make_engine(max_payload_bytes=1000)

    @engine.task(id="echo")
    async def echo(ctx: RunContext, text: str) -> int:
        return len(text)

    @engine.parent_task(id="parent", retry=RETRIES)
    def parent(ctx: RunContext, size: int) -> Parent[None]:
        return Parent(children=[child(echo, "x" * size)])

    with pytest.raises(PayloadTooLargeError) as info:
        await echo.trigger("y" * 2000)
    assert str(info.value) == (
        "input of task 'echo' is 2002 bytes serialized; the limit is 1000 bytes "
        "(engine option max_payload_bytes)"
    )
    assert isinstance(info.value, InputValidationError)
    assert await runs_of(engine, "echo") == []  # nothing was stored

    async with engine:
        run = await (await parent.trigger(2000)).wait(timeout=10)
        echoes = await runs_of(engine, "echo")

    assert run.status is RunStatus.FAILED
    assert run.attempt == 1
    assert run.error is not None
    assert run.error.message == (
        "parent task 'parent', child 0: input of task 'echo' is 2002 bytes serialized; the "
        "limit is 1000 bytes (engine option max_payload_bytes)"
    )
    assert echoes == []


async def test_finalize_task_that_cannot_take_finalize_input_is_finalize_failed(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine()

    @engine.task(id="leaf")
    async def leaf(ctx: RunContext, n: int) -> int:
        return n

    @engine.task(id="wrong-finalize")
    async def wrong_finalize(ctx: RunContext, n: int) -> int:
        return n

    @engine.parent_task(id="parent", finalize=wrong_finalize, retry=RETRIES)
    def parent(ctx: RunContext, n: int) -> Parent[None]:
        return Parent(children=[child(leaf, n)])

    async with engine:
        run = await (await parent.trigger(1)).wait(timeout=10)

    assert run.status is RunStatus.FINALIZE_FAILED
    assert run.error is not None
    assert run.error.message.startswith(
        "parent 'parent' could not start its finalize task 'wrong-finalize': invalid input "
        "for task 'wrong-finalize' (expected int)"
    )
