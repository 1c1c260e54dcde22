"""Group commits and batched reads for tree nodes' waits (see `Durable.spawn_and_wait`).

Many tree nodes start, replay and suspend at once (the runs of one claim). Each still waits
for its own write or read before it goes on, as with a call of its own; what they share is
the transaction or the query, one per turn of the event loop or per write under way.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from perdure.core.clock import Clock
from perdure.core.errors import StorageError
from perdure.core.models import StepRecord
from perdure.storage import Storage
from perdure.storage.steps import Spawn

R = TypeVar("R")


class SpawnCommits:
    """Group commit of tree nodes' waits: the `Spawn`s submitted while a commit is under way
    (or in the same turn of the event loop, as the attempts of one claim start) go in one
    transaction, fenced each on its own attempt; every submitter still waits for its own
    result before its body unwinds, as with a write of its own."""

    def __init__(self) -> None:
        # No reference to the storage it is keyed by (the key would never be collected).
        self.loop = asyncio.get_running_loop()
        self._pending: list[tuple[Spawn, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, spawn: Spawn, storage: Storage, clock: Clock) -> bool:
        future: asyncio.Future[bool] = self.loop.create_future()
        self._pending.append((spawn, future))
        if self._flusher is None or self._flusher.done():
            # A context of its own: a copy of the first submitter's would keep that attempt's
            # RunContext alive in the flusher (a reference cycle once the flusher ends).
            self._flusher = self.loop.create_task(
                self._flush(storage, clock), context=contextvars.Context()
            )
        return await future

    async def _flush(self, storage: Storage, clock: Clock) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await storage.suspend_with_children(
                    [spawn for spawn, _ in batch], clock.time()
                )
            except Exception as exc:
                if len(batch) == 1 or isinstance(exc, StorageError):
                    for _, future in batch:  # the database failed them all alike
                        _fail(future, exc)
                    continue
                # One spawn's conflict (a taken token id) must not fail the others: each alone.
                for spawn, future in batch:
                    try:
                        [applied] = await storage.suspend_with_children([spawn], clock.time())
                    except Exception as single:
                        _fail(future, single)
                    else:
                        _resolve(future, applied)
                continue
            for (_, future), applied in zip(batch, results, strict=True):
                _resolve(future, applied)


class StepLoads:
    """Batched reads of recorded steps: the replays that start in one turn of the event loop
    (the resumed runs of one claim) or while a read is under way read their histories in one
    query. Each is an ordinary read of committed records, as a read of its own would be."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()  # no reference to the storage (see SpawnCommits)
        self._pending: dict[str, list[asyncio.Future[list[StepRecord]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def load(self, run_id: str, storage: Storage) -> list[StepRecord]:
        future: asyncio.Future[list[StepRecord]] = self.loop.create_future()
        self._pending.setdefault(run_id, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = self.loop.create_task(self._read(storage), context=contextvars.Context())
        return await future

    async def _read(self, storage: Storage) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                found = await storage.load_steps_of(list(batch))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        _fail(future, exc)
                continue
            for run_id, futures in batch.items():
                for future in futures:
                    _resolve(future, list(found.get(run_id, ())))


def _resolve(future: asyncio.Future[R], result: R) -> None:
    if not future.done():  # its attempt was cancelled meanwhile: nobody waits for the result
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _PerLoop(Protocol):
    loop: asyncio.AbstractEventLoop


L = TypeVar("L", bound=_PerLoop)


def _of_loop(
    registry: weakref.WeakKeyDictionary[Storage, L], storage: Storage, make: Callable[[], L]
) -> L:
    """`registry`'s batcher of `storage` on the running event loop (made on first use)."""
    found = registry.get(storage)
    if found is None or found.loop is not asyncio.get_running_loop():
        found = registry[storage] = make()
    return found


_SPAWN_COMMITS: weakref.WeakKeyDictionary[Storage, SpawnCommits] = weakref.WeakKeyDictionary()
_STEP_LOADS: weakref.WeakKeyDictionary[Storage, StepLoads] = weakref.WeakKeyDictionary()


def spawn_commits(storage: Storage) -> SpawnCommits:
    """The group committer of `storage` on the running event loop."""
    return _of_loop(_SPAWN_COMMITS, storage, SpawnCommits)


def step_loads(storage: Storage) -> StepLoads:
    """The batched reader of `storage` on the running event loop."""
    return _of_loop(_STEP_LOADS, storage, StepLoads)
