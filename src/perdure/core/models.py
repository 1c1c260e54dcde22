"""Snapshots returned to users: `Run`, `RunEvent`, `RunPage`, and the rows storage writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from perdure.core.clock import to_datetime
from perdure.core.errors import ErrorInfo
from perdure.core.statuses import RunStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Run:
    """A run as stored at one moment. Timestamps are UTC datetimes; payloads are JSON values."""

    id: str
    task_id: str
    status: RunStatus
    attempt: int
    input: Any
    output: Any
    error: ErrorInfo | None
    queue: str
    priority: int
    tags: list[str]
    metadata: dict[str, Any]
    idempotency_key: str | None
    parent_id: str | None
    root_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    available_at: datetime | None = None
    expires_at: datetime | None = None
    max_attempts: int = 1
    lost_leases: int = 0
    failures: int = 0
    timeout: float | None = None
    version: str | None = None
    concurrency_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    @property
    def is_finished(self) -> bool:
        return self.status.is_terminal

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:  # type: ignore[attr-defined]
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, ErrorInfo):
                value = value.to_json()
            elif isinstance(value, RunStatus):
                value = value.value
            out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class RunEvent:
    run_id: str
    seq: int
    type: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict[str, Any])

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "type": self.type,
            "at": self.at.isoformat(),
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of a listing, newest first; pass `next_cursor` to get the next page."""

    runs: list[Run]
    next_cursor: str | None


@dataclass(slots=True)
class NewRun:
    """What storage needs to insert a run. Payloads are already-serialized JSON text. Not
    frozen only because a frozen dataclass costs 3x to build (a bulk trigger makes thousands);
    nothing changes one after it is built."""

    id: str
    task_id: str
    queue: str
    input_json: str
    status: RunStatus
    available_at: float
    max_attempts: int
    priority: int = 0
    timeout: float | None = None
    version: str | None = None
    expires_at: float | None = None
    idempotency_key: str | None = None
    idempotency_expires_at: float | None = None
    concurrency_key: str | None = None
    tags: list[str] = field(default_factory=list[str])
    metadata: dict[str, Any] = field(default_factory=dict[str, Any])
    parent_id: str | None = None
    root_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended, as the worker reports it. Storage applies it fenced."""

    run_id: str
    attempt: int
    status: RunStatus  # COMPLETED, FAILED, TIMED_OUT, CANCELLED or RETRYING
    output_json: str | None = None
    error: ErrorInfo | None = None
    retry_at: float | None = None
    #: The run's parent (settled by this outcome unless it retries); None for a root run.
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as registered in the catalog by workers (no code, just what a trigger needs)."""

    task_id: str
    queue: str
    max_attempts: int
    timeout: float | None
    version: str | None
    input_schema: dict[str, Any] | None
    output_schema: dict[str, Any] | None
    updated_at: datetime | None = None


def ts(value: float | None) -> datetime | None:
    return to_datetime(value)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One durable call of a run (a step, sleep, token or child wait) at its position."""

    run_id: str
    position: int
    kind: str  # step | sleep | token | child
    name: str
    status: str  # completed | failed | pending
    output: Any = None
    error: ErrorInfo | None = None
    wake_at: float | None = None
    token_id: str | None = None
    child_run_id: str | None = None
    batch: int | None = None
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class RunResult(Generic[T]):
    """The settled result of a child run: `ok` with `output`, or not with `error`."""

    ok: bool
    output: T | None = None
    error: ErrorInfo | None = None
    status: RunStatus = RunStatus.COMPLETED
    run_id: str | None = None
