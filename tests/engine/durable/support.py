"""Helpers of the durable-function tests (tests/engine/test_durable_*.py).

The tests use the engine tier's fixtures (`make_engine`, `engine`, `clock`, `shared_url`), so
they run on every backend `backend_url` provides: a SQLite file, `memory://`, PostgreSQL.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from perdure import Engine, ManualClock, Run, RunEvent, RunStatus

from ..support import wait_for_status, wait_until

HOUR = 3600.0


class Calls(Counter[str]):
    """How many times each side effect ran (a step function increments its own name)."""

    def hit(self, name: str) -> None:
        self[name] += 1


async def wait_suspended(engine: Engine, run_id: str) -> Run:
    return await wait_for_status(engine, run_id, RunStatus.SUSPENDED)


def advance(engine: Engine, clock: ManualClock, seconds: float | timedelta) -> None:
    """Move the clock and let the worker look for runs that became due."""
    clock.advance(seconds)
    engine.wake()


async def token_id_of(engine: Engine, run_id: str, index: int = 0) -> str:
    """The id of the run's `index`-th token, once the run suspended waiting on it."""
    found: list[str] = []

    async def ready() -> bool:
        run = await engine.get_run(run_id)
        tokens = [
            e.data["token_id"] for e in await engine.events(run_id) if e.type == "token_recorded"
        ]
        if run.status is RunStatus.SUSPENDED and len(tokens) > index:
            found.append(tokens[index])
            return True
        return False

    await wait_until(ready, what=f"run {run_id} to suspend on token #{index}")
    return found[-1]


def assert_contiguous(events: list[RunEvent]) -> None:
    """Event numbers go 1..n without a gap or a duplicate."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), [
        (e.seq, e.type) for e in events
    ]


def recorded(events: list[RunEvent], kind: str = "step") -> list[tuple[int, str, str]]:
    """`(position, name, status)` of the run's `<kind>_recorded` events, in position order."""
    return sorted(
        (e.data["position"], e.data["name"], e.data["status"])
        for e in events
        if e.type == f"{kind}_recorded"
    )


async def wait_for_event(engine: Engine, run_id: str, type_: str, n: int = 1) -> None:
    """Wait until the run's history holds `n` events of type `type_`."""

    async def enough() -> bool:
        return sum(e.type == type_ for e in await engine.events(run_id)) >= n

    await wait_until(enough, what=f"{n} {type_!r} event(s) of run {run_id}")
