"""What is refused before anything is stored: invalid input, oversized payloads, invalid
trigger options, and invalid task definitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from perdure import (
    ConfigurationError,
    DuplicateTaskError,
    Engine,
    InputValidationError,
    InvalidOptionError,
    PayloadTooLargeError,
    RunContext,
    TaskNotFoundError,
)

from .conftest import MakeEngine


class Item(BaseModel):
    x: int
    name: str = "item"


async def test_invalid_input_raises_and_stores_nothing(engine: Engine) -> None:
    @engine.task(id="typed")
    async def typed(ctx: RunContext, item: Item) -> int:
        return item.x

    with pytest.raises(InputValidationError) as info:
        await typed.trigger({"x": "not-an-int"})  # type: ignore[arg-type]

    message = str(info.value)
    assert "x" in message
    assert "typed" in message  # names the task
    assert "not-an-int" in message  # shows what was given
    assert info.value.task_id == "typed"
    assert [e["field"] for e in info.value.errors] == ["input.x"]
    assert (await engine.list_runs()).runs == []


async def test_missing_field_and_wrong_primitive_are_rejected(engine: Engine) -> None:
    @engine.task(id="typed")
    async def typed(ctx: RunContext, item: Item) -> int:
        return item.x

    @engine.task(id="count")
    async def count(ctx: RunContext, n: int) -> int:
        return n

    with pytest.raises(InputValidationError, match=r"input\.x"):
        await typed.trigger({"name": "no x"})  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"count"):
        await count.trigger("seven")  # type: ignore[arg-type]
    with pytest.raises(InputValidationError):
        await engine.trigger("count", [1, 2])
    assert (await engine.list_runs()).runs == []


async def test_input_for_a_task_without_input_must_be_none(engine: Engine) -> None:
    @engine.task(id="bare")
    async def bare(ctx: RunContext) -> None:
        return None

    with pytest.raises(InputValidationError, match=r"bare"):
        await bare.trigger(5)  # type: ignore[arg-type]
    assert (await engine.list_runs()).runs == []


async def test_oversized_input_raises_payload_too_large_and_stores_nothing(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(max_payload_bytes=1000)

    @engine.task(id="blob")
    async def blob(ctx: RunContext, data: str) -> int:
        return len(data)

    with pytest.raises(PayloadTooLargeError) as info:
        await blob.trigger("x" * 2000)
    assert "blob" in str(info.value)
    assert "1000" in str(info.value)
    assert isinstance(info.value, InputValidationError)
    assert (await engine.list_runs()).runs == []

    handle = await blob.trigger("x" * 500)  # under the limit: accepted
    assert (await handle.get()).input == "x" * 500


async def test_oversized_input_in_a_batch_stores_nothing(make_engine: MakeEngine) -> None:
    engine = make_engine(max_payload_bytes=100)

    @engine.task(id="blob")
    async def blob(ctx: RunContext, data: str) -> int:
        return len(data)

    with pytest.raises(PayloadTooLargeError):
        await blob.batch_trigger(["small", "y" * 500])
    assert (await engine.list_runs()).runs == []


async def test_oversized_metadata_raises_payload_too_large(make_engine: MakeEngine) -> None:
    engine = make_engine(max_payload_bytes=100)

    @engine.task(id="meta")
    async def meta(ctx: RunContext) -> None:
        return None

    with pytest.raises(PayloadTooLargeError, match="metadata"):
        await meta.trigger(None, metadata={"note": "z" * 500})
    assert (await engine.list_runs()).runs == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("priority", "high"),
        ("priority", True),
        ("ttl", -1),
        ("ttl", 0),
        ("delay", -5),
        ("run_at", datetime(2030, 1, 1, 12, 0)),  # naive: no timezone
        ("tags", "one-string"),
        ("idempotency_key", ""),
        ("queue", ""),
        ("metadata", ["not", "a", "dict"]),
    ],
)
async def test_invalid_trigger_option_names_the_option_and_stores_nothing(
    engine: Engine, option: str, value: Any
) -> None:
    @engine.task(id="opt")
    async def opt(ctx: RunContext, n: int) -> int:
        return n

    with pytest.raises(InvalidOptionError) as info:
        await opt.trigger(1, **{option: value})
    assert info.value.option == option
    assert repr(option) in str(info.value)
    assert (await engine.list_runs()).runs == []


async def test_delay_and_run_at_together_are_refused(engine: Engine) -> None:
    @engine.task(id="opt")
    async def opt(ctx: RunContext, n: int) -> int:
        return n

    with pytest.raises(InvalidOptionError, match="delay"):
        await opt.trigger(1, delay=timedelta(seconds=5), run_at=datetime.now(UTC))
    assert (await engine.list_runs()).runs == []


async def test_unknown_task_id_raises_task_not_found(engine: Engine) -> None:
    @engine.task(id="known")
    async def known(ctx: RunContext) -> None:
        return None

    with pytest.raises(TaskNotFoundError, match="known"):
        await engine.trigger("unknown", None)
    with pytest.raises(TaskNotFoundError):
        engine.get_task("unknown")
    assert (await engine.list_runs()).runs == []


def test_duplicate_task_id_raises_at_definition() -> None:
    engine = Engine("memory://")

    @engine.task(id="same")
    async def first(ctx: RunContext) -> None:
        return None

    with pytest.raises(DuplicateTaskError, match="same"):

        @engine.task(id="same")
        async def second(ctx: RunContext) -> None:
            return None

    assert isinstance(DuplicateTaskError("x"), ConfigurationError)
    assert engine.get_task("same").fn is first.fn


def test_task_ids_are_per_engine() -> None:
    one, two = Engine("memory://"), Engine("memory://")

    @one.task(id="shared-id")
    async def a(ctx: RunContext) -> None:
        return None

    @two.task(id="shared-id")
    async def b(ctx: RunContext) -> None:
        return None

    assert one.get_task("shared-id") is a
    assert two.get_task("shared-id") is b


def _no_params() -> None:
    return None


def _three(ctx: RunContext, a: int, b: int) -> None:
    return None


def _varargs(ctx: RunContext, *args: int) -> None:
    return None


def _kwonly(ctx: RunContext, *, n: int) -> None:
    return None


@pytest.mark.parametrize("fn", [_no_params, _three, _varargs, _kwonly])
def test_bad_task_signature_raises_configuration_error(fn: Any) -> None:
    engine = Engine("memory://")
    with pytest.raises(ConfigurationError, match=r"\(ctx\) or \(ctx, input\)"):
        engine.task(id="bad")(fn)
    assert "bad" not in engine.tasks


class Opaque:
    """Not a type pydantic can serialize."""


def test_input_type_that_cannot_be_json_raises_configuration_error() -> None:
    engine = Engine("memory://")

    def takes_opaque(ctx: RunContext, value: Opaque) -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"'opaque'.*input type Opaque"):
        engine.task(id="opaque")(takes_opaque)
    assert "opaque" not in engine.tasks


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"id": ""}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": "t", "timeout": 0}, "timeout"),
        ({"id": "t", "timeout": -1}, "timeout"),
        ({"id": "t", "queue": ""}, "queue"),
        ({"id": "t", "retry": 3}, "retry"),
    ],
)
def test_invalid_task_options_name_the_option(options: dict[str, Any], option: str) -> None:
    engine = Engine("memory://")

    def fn(ctx: RunContext) -> None:
        return None

    with pytest.raises(InvalidOptionError) as info:
        engine.task(**options)(fn)
    assert info.value.option == option
    assert engine.tasks == {}


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"lease": -1}, "lease"),
        ({"lease": 5, "heartbeat": 10}, "heartbeat"),
        ({"max_payload_bytes": "many"}, "max_payload_bytes"),
    ],
)
def test_invalid_engine_options_name_the_option(options: dict[str, Any], option: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        Engine("memory://", **options)
    assert info.value.option == option
