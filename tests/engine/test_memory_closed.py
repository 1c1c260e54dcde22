"""An in-memory engine's runs end with it: reading afterwards says so instead of showing an
empty database."""

import pytest

from perdure import Engine, PerdureError, RunContext


async def test_reading_a_closed_memory_engine_raises_a_clear_error() -> None:
    engine = Engine("memory://")

    @engine.task(id="echo")
    async def echo(ctx: RunContext, n: int) -> int:
        return n

    async with engine:
        handle = await echo.trigger(3)
        assert await handle.result(timeout=10) == 3

    with pytest.raises(PerdureError, match=r"memory://.*closed at shutdown"):
        await handle.get()
