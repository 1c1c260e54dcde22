"""The waiters' reader (engine/waiters.py) against a scripted read: which runs it looks up,
which it reads as known, and what it keeps once callers have left."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from perdure import Run, RunNotFoundError
from perdure.engine.waiters import RunWaiters


class ScriptedRead:
    """A storage read that waits for `release` and finds `existing` runs, none finished."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.release = asyncio.Event()
        self.calls: list[tuple[list[str], bool]] = []

    async def __call__(self, run_ids: Sequence[str], known: bool) -> dict[str, Run | None]:
        self.calls.append((list(run_ids), known))
        await self.release.wait()
        return {} if known else {i: None for i in run_ids if i in self.existing}


async def test_a_run_whose_callers_left_during_its_first_read_is_not_kept_as_known() -> None:
    read = ScriptedRead({"run_a"})
    waiters = RunWaiters(read, poll_interval=10)
    with pytest.raises(TimeoutError):
        await waiters.finished("run_a", timeout=0.05)  # leaves while the read is in flight
    read.release.set()
    await asyncio.sleep(0.01)  # the read completes with nobody waiting

    # Waited again: looked up again (not read as known), so a deletion meanwhile is seen.
    read.existing.clear()
    with pytest.raises(RunNotFoundError, match="run_a"):
        await waiters.finished("run_a", timeout=5)
    assert read.calls == [(["run_a"], False), (["run_a"], False)]
