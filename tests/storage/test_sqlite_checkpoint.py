"""SQLite's WAL goes back into the database file from a thread, not from the writers' COMMITs."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from perdure.storage import sqlite as sqlite_module
from tests.storage.factories import create_one, open_storage


def checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "perdure-checkpoint"]


async def test_a_thread_checkpoints_after_a_round_of_commits(tmp_path: Path) -> None:
    path = tmp_path / "perdure.db"
    before = len(checkpointers())
    async with open_storage(f"sqlite:///{path}") as storage:
        await create_one(storage)
        size = path.stat().st_size
        for _ in range(sqlite_module.CHECKPOINT_EVERY // 2):
            await create_one(storage)
        assert len(checkpointers()) == before, "a short-lived storage starts no thread"
        for _ in range(2 * sqlite_module.CHECKPOINT_EVERY):
            await create_one(storage)
        assert len(checkpointers()) == before + 1
        # COMMITs checkpoint only past FALLBACK_CHECKPOINT_PAGES, far more than these runs
        # take: only the thread can have copied their pages into the database file.
        for _ in range(500):
            if path.stat().st_size > size:
                break
            await asyncio.sleep(0.01)
        assert path.stat().st_size > size
    assert len(checkpointers()) == before, "closing the storage stops its checkpointer"
