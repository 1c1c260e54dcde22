"""`RunHandle[Out]`: a reference to one run, usable from any process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from perdure.core.errors import (
    RunCancelledError,
    RunFailedError,
    RunTimedOutError,
)
from perdure.core.models import Run, RunEvent
from perdure.core.serialization import ANY_CODEC, Codec
from perdure.core.statuses import RunStatus
from perdure.engine.sync import run_sync

if TYPE_CHECKING:
    from perdure.engine.engine import Engine

Out = TypeVar("Out")


class RunHandle(Generic[Out]):
    __slots__ = ("_codec", "engine", "id")

    def __init__(self, engine: Engine, run_id: str, codec: Codec[Out] | None = None) -> None:
        self.engine = engine
        self.id = run_id
        self._codec: Codec[Any] = codec or ANY_CODEC

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.id == self.id  # pyright: ignore[reportUnknownMemberType]

    def __hash__(self) -> int:
        return hash(self.id)

    async def get(self) -> Run:
        """The run as stored now."""
        return await self.engine.get_run(self.id)

    async def wait(self, timeout: float | None = None) -> Run:
        """Wait until the run is finished, whatever its status; returns the final snapshot.
        Raises TimeoutError after `timeout` seconds."""
        return await self.engine._wait_finished(self.id, timeout)  # pyright: ignore[reportPrivateUsage]

    async def result(self, timeout: float | None = None) -> Out:
        """The run's output in the task's declared type, or `RunFailedError` (and subclasses
        `RunTimedOutError`, `RunCancelledError`) carrying the run's error."""
        run = await self.wait(timeout)
        return self.decode(run)

    def decode(self, run: Run) -> Out:
        if run.status is RunStatus.COMPLETED:
            return self._codec.load(run.output)
        reason = run.error.message if run.error else run.status.value
        message = f"run {run.id} of task {run.task_id!r} ended {run.status.value}: {reason}"
        if run.status is RunStatus.TIMED_OUT:
            raise RunTimedOutError(message, run=run, error=run.error)
        if run.status is RunStatus.CANCELLED:
            raise RunCancelledError(message, run=run, error=run.error)
        raise RunFailedError(message, run=run, error=run.error)

    async def cancel(self, reason: str = "cancelled") -> Run:
        """Cancel the run if it has not finished; returns the run after the attempt."""
        return await self.engine.cancel(self.id, reason)

    async def events(self, after_seq: int = 0) -> list[RunEvent]:
        return await self.engine.events(self.id, after_seq)

    def get_sync(self) -> Run:
        return run_sync(self.engine, "get_sync", self.get)

    def wait_sync(self, timeout: float | None = None) -> Run:
        return run_sync(self.engine, "wait_sync", lambda: self.wait(timeout))

    def result_sync(self, timeout: float | None = None) -> Out:
        return run_sync(self.engine, "result_sync", lambda: self.result(timeout))

    def cancel_sync(self, reason: str = "cancelled") -> Run:
        return run_sync(self.engine, "cancel_sync", lambda: self.cancel(reason))

    def events_sync(self, after_seq: int = 0) -> list[RunEvent]:
        return run_sync(self.engine, "events_sync", lambda: self.events(after_seq))
