"""perdure: durable task execution for Python.

Declare typed tasks on an `Engine`; workers run them so that they survive crashes, retries,
deploys and long waits. See README.md for a quickstart.
"""

from perdure.core.clock import Clock, ManualClock, SystemClock
from perdure.core.errors import (
    BackpressureError,
    ConfigurationError,
    DuplicateRunError,
    DuplicateTaskError,
    ErrorInfo,
    FinalizeFailedError,
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
from perdure.core.limits import Debounce, QueueLimits, RateLimit
from perdure.core.models import Run, RunEvent, RunPage, RunResult
from perdure.core.retry import RetryPolicy
from perdure.core.statuses import RunStatus
from perdure.engine.context import RunContext
from perdure.engine.durable import Token
from perdure.engine.engine import Engine
from perdure.engine.handle import RunHandle
from perdure.engine.queues import QueueInfo
from perdure.engine.task import Task
from perdure.engine.trees import (
    ChildResult,
    ChildSpec,
    FinalizeInput,
    LoopOutput,
    LoopResult,
    Parent,
    SleepingTask,
    child,
)

__version__ = "0.1.0"

__all__ = [
    "BackpressureError",
    "ChildResult",
    "ChildSpec",
    "Clock",
    "ConfigurationError",
    "Debounce",
    "DuplicateRunError",
    "DuplicateTaskError",
    "Engine",
    "ErrorInfo",
    "FinalizeFailedError",
    "FinalizeInput",
    "InputValidationError",
    "InvalidOptionError",
    "LoopOutput",
    "LoopResult",
    "ManualClock",
    "NonDeterminismError",
    "NonRetryableError",
    "OutputValidationError",
    "Parent",
    "PayloadTooLargeError",
    "PerdureError",
    "QueueInfo",
    "QueueLimits",
    "RateLimit",
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
    "SleepingTask",
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
    "child",
]
