"""perdure: durable task execution for Python.

Declare typed tasks on an `Engine`; workers run them so that they survive crashes, retries,
deploys and long waits. See README.md for a quickstart.
"""

from perdure.core.clock import Clock, ManualClock, SystemClock
from perdure.core.errors import (
    BackpressureError,
    ConfigurationError,
    DuplicateTaskError,
    ErrorInfo,
    InputValidationError,
    InvalidOptionError,
    NonDeterminismError,
    NonRetryableError,
    OutputValidationError,
    PayloadTooLargeError,
    PerdureError,
    RateLimitedError,
    RetryableError,
    RunCancelledError,
    RunExpiredError,
    RunFailedError,
    RunNotFoundError,
    RunTimedOutError,
    StepFailedError,
    StorageError,
    SyncInAsyncError,
    TaskNotFoundError,
    TaskTimeoutError,
    TokenNotFoundError,
    TokenTimeoutError,
    WorkerLostError,
)
from perdure.core.models import Run, RunEvent, RunPage, RunResult
from perdure.core.retry import RetryPolicy
from perdure.core.statuses import RunStatus
from perdure.engine.context import RunContext
from perdure.engine.durable import Token
from perdure.engine.engine import Engine
from perdure.engine.handle import RunHandle
from perdure.engine.task import Task

__version__ = "0.1.0"

__all__ = [
    "BackpressureError",
    "Clock",
    "ConfigurationError",
    "DuplicateTaskError",
    "Engine",
    "ErrorInfo",
    "InputValidationError",
    "InvalidOptionError",
    "ManualClock",
    "NonDeterminismError",
    "NonRetryableError",
    "OutputValidationError",
    "PayloadTooLargeError",
    "PerdureError",
    "RateLimitedError",
    "RetryPolicy",
    "RetryableError",
    "Run",
    "RunCancelledError",
    "RunContext",
    "RunEvent",
    "RunExpiredError",
    "RunFailedError",
    "RunHandle",
    "RunNotFoundError",
    "RunPage",
    "RunResult",
    "RunStatus",
    "RunTimedOutError",
    "StepFailedError",
    "StorageError",
    "SyncInAsyncError",
    "SystemClock",
    "Task",
    "TaskNotFoundError",
    "TaskTimeoutError",
    "Token",
    "TokenNotFoundError",
    "TokenTimeoutError",
    "WorkerLostError",
    "__version__",
]
