"""The error hierarchy. One root, `PerdureError`; every message says what happened, to which
run or task, and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PerdureError(Exception):
    """Root of every error perdure raises."""


# --- raised by task code -------------------------------------------------------------------


class RetryableError(PerdureError):
    """Raise from a task to fail this attempt and retry per the task's RetryPolicy.

    Any exception that is not a `NonRetryableError` is retried; this class exists to be explicit.
    """


class NonRetryableError(PerdureError):
    """Raise from a task to fail the run at once, whatever attempts remain."""


# --- configuration and input -----------------------------------------------------------------


class ConfigurationError(PerdureError):
    """A task definition or engine setting is invalid."""


class InvalidOptionError(ConfigurationError, ValueError):
    """An option has a value that is not allowed."""

    def __init__(self, option: str, allowed: str, got: object) -> None:
        self.option = option
        self.allowed = allowed
        self.got = got
        super().__init__(f"invalid value for {option!r}: {got!r}; expected {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as `cls(*args)`; args holds the message, not our parameters.
        return (type(self), (self.option, self.allowed, self.got))


class DuplicateTaskError(ConfigurationError):
    """Two tasks were defined with the same id on one engine."""


class DuplicateRunError(PerdureError):
    """A run with this unique id already exists (sleeping tasks); nothing was stored."""


class TaskNotFoundError(PerdureError, LookupError):
    """No task with this id is defined (or registered by any worker)."""


class InputValidationError(PerdureError, ValueError):
    """A trigger's input does not match the task's declared input type. Nothing was stored."""

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        self.task_id = task_id
        self.errors = errors or []
        super().__init__(message)


class PayloadTooLargeError(InputValidationError):
    """A serialized payload is larger than the engine's `max_payload_bytes`."""


class OutputValidationError(NonRetryableError):
    """A task returned a value that does not serialize to its declared output type."""


class FinalizeFailedError(NonRetryableError):
    """A parent's finalize (or a sequence/loop step) failed: the run ends `finalize_failed`."""


class NonDeterminismError(NonRetryableError):
    """A replay met a different step than the one recorded at that position."""


class SyncInAsyncError(PerdureError, RuntimeError):
    """A blocking `_sync` method was called inside a running event loop."""

    def __init__(self, name: str) -> None:
        self.name = name
        async_name = name.removesuffix("_sync")
        super().__init__(
            f"{name}() blocks and cannot run inside a running event loop; "
            f"use `await {async_name}(...)` instead"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))


# --- flow control (rejected, nothing stored) -------------------------------------------------


class BackpressureError(PerdureError):
    """The queue is at its depth cap; the trigger was rejected and nothing stored."""

    def __init__(
        self, message: str, *, queue: str | None = None, depth: int = 0, cap: int = 0
    ) -> None:
        self.queue = queue
        self.depth = depth
        self.cap = cap
        super().__init__(message)

    def __reduce__(self) -> Any:
        return (_rebuild_backpressure, (str(self), self.queue, self.depth, self.cap))


def _rebuild_backpressure(message: str, queue: str | None, depth: int, cap: int) -> Any:
    return BackpressureError(message, queue=queue, depth=depth, cap=cap)


class RateLimitedError(PerdureError):
    """The rate limit is exhausted; the trigger was rejected and nothing stored."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.retry_after))


# --- run outcomes ----------------------------------------------------------------------------


class RunNotFoundError(PerdureError, LookupError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} not found")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_id,))


class RunFailedError(PerdureError):
    """The run finished without a result; `.run` is its final snapshot, `.error` its error."""

    def __init__(self, message: str, *, run: Any = None, error: ErrorInfo | None = None) -> None:
        self.run = run
        self.error = error
        super().__init__(message)


class RunTimedOutError(RunFailedError):
    """The run exceeded its timeout."""


class RunCancelledError(RunFailedError):
    """The run was cancelled. Task code may also raise it to cancel its own run."""

    def __init__(
        self, message: str = "run cancelled", *, run: Any = None, error: ErrorInfo | None = None
    ) -> None:
        super().__init__(message, run=run, error=error)


class StorageError(PerdureError):
    """The database failed; the driver's error is the `__cause__`."""


class TaskTimeoutError(PerdureError):
    """An attempt ran longer than the task's timeout (stored as the run's error)."""


class RunExpiredError(PerdureError):
    """The run's ttl passed before any worker started it (stored as the run's error)."""


class TokenNotFoundError(PerdureError, LookupError):
    """No wait token with this id exists."""


class TokenTimeoutError(PerdureError):
    """A wait token was not completed before its timeout."""


class StepFailedError(NonRetryableError):
    """Re-raised on replay for a step whose final error was recorded."""


class WorkerLostError(PerdureError):
    """The run's worker stopped heartbeating too many times (stored as the run's error)."""


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A stored error: enough to show and to decide, never a pickled exception."""

    type: str
    message: str
    retryable: bool = True
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
            "traceback": self.traceback,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(
            type=str(data.get("type", "Error")),
            message=str(data.get("message", "")),
            retryable=bool(data.get("retryable", True)),
            traceback=data.get("traceback"),
        )

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool | None = None) -> ErrorInfo:
        import traceback

        if retryable is None:
            retryable = not isinstance(exc, NonRetryableError)
        tb = "".join(traceback.format_exception(exc))
        return cls(type=type(exc).__name__, message=str(exc), retryable=retryable, traceback=tb)
