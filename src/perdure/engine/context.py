"""`RunContext`: what a task body sees of its run."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from perdure.core.errors import InvalidOptionError
from perdure.core.models import Run
from perdure.core.retry import RetryPolicy
from perdure.engine.durable import Durable, Token, duration, timestamp
from perdure.engine.sync import run_sync
from perdure.storage.rows import dumps

if TYPE_CHECKING:
    from perdure.engine.engine import Engine

P = ParamSpec("P")
T = TypeVar("T")


class Signal:
    """A flag set once by the engine, readable from async code and from threads.

    Every attempt makes two and most are never waited on, so the waiting machinery (a
    `threading.Event` for threads, an `asyncio.Event` per async waiter) is made on first wait.
    """

    __slots__ = ("_flag", "_thread_event", "_waiters")

    #: Guards every Signal's waiter registration; held for a few instructions, rarely taken.
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._flag = False
        self._thread_event: threading.Event | None = None
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def is_set(self) -> bool:
        return self._flag

    def __bool__(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._lock:
            self._flag = True
            thread_event = self._thread_event
            waiters = list(self._waiters)
        if thread_event is not None:
            thread_event.set()
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> None:
        if self._flag:
            return
        event = asyncio.Event()
        with self._lock:
            if self._flag:
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()

    def wait_sync(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._flag:
                return True
            if self._thread_event is None:
                self._thread_event = threading.Event()
            thread_event = self._thread_event
        return thread_event.wait(timeout)


class _HistoryLog(logging.LoggerAdapter[logging.Logger]):
    """`ctx.log`: logs with run context and captures each line into the run's history."""

    def __init__(
        self,
        logger: logging.Logger,
        extra: dict[str, Any],
        sink: Callable[[str, dict[str, Any]], None],
    ) -> None:
        super().__init__(logger, extra)
        self._sink = sink

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        self._sink("log", {"level": logging.getLevelName(level).lower(), "message": text})
        super().log(level, msg, *args, **kwargs)


class RunContext:
    """Passed to every task body as its first argument.

    `cancelled` is set when the run is cancelled or this worker lost its lease; `shutdown` when
    the worker is shutting down (finish quickly or be released back to the queue).
    """

    def __init__(self, engine: Engine, run: Run, worker_id: str) -> None:
        self.engine = engine
        self.run = run
        self.run_id = run.id
        self.task_id = run.task_id
        self.attempt = run.attempt
        self.worker_id = worker_id
        self.metadata: dict[str, Any] = dict(run.metadata)
        self.cancelled = Signal()
        self.shutdown = Signal()
        self._durable = Durable(self, run, worker_id)
        self._pending_events: list[tuple[str, dict[str, Any]]] = []
        self._saved_metadata: dict[str, Any] = dict(run.metadata)

    @functools.cached_property
    def log(self) -> _HistoryLog:
        """A logger carrying the run's context; each line is also kept in its history."""
        extra = {
            "run_id": self.run_id,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
        }
        return _HistoryLog(
            logging.getLogger(f"perdure.task.{self.task_id}"), extra, self._buffer_event
        )

    def __repr__(self) -> str:
        return f"<RunContext run={self.run_id} task={self.task_id!r} attempt={self.attempt}>"

    # --- durable calls -----------------------------------------------------------------------

    # `retry=` cannot sit next to ParamSpec arguments (PEP 612), so a call passing it is
    # typed by these two overloads, without checking fn's own arguments.
    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: RetryPolicy,
        **kwargs: Any,
    ) -> T: ...
    @overload
    async def step(
        self, name: str, fn: Callable[..., T], /, *args: Any, retry: RetryPolicy, **kwargs: Any
    ) -> T: ...
    @overload
    async def step(
        self, name: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    @overload
    async def step(
        self, name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` once per run: its result is recorded and returned from the
        record on every later execution. Pass `retry=RetryPolicy(...)` as a keyword to retry
        the step in place before the failure reaches the run."""
        retry = _retry(kwargs.pop("retry", None))
        # Take the position before the first await: under asyncio.gather, positions then
        # follow the order the calls start in, whatever order their I/O completes in.
        position = self._durable.reserve()
        await self._flush_events(position)
        return await self._durable.step(name, fn, args, kwargs, retry, position=position)

    def step_sync(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`step` for `def` task bodies (runs `fn` in a worker thread)."""
        retry = _retry(kwargs.pop("retry", None))
        return run_sync(
            self.engine,
            "step_sync",
            lambda: self._durable.step(name, fn, args, kwargs, retry, True),
        )

    async def sleep(self, seconds: float | timedelta) -> None:
        """Sleep durably: short sleeps stay in process; longer ones suspend the run, freeing
        its slot, and it resumes on any worker when due."""
        await self.sleep_until_ts(self.engine.clock.time() + duration(seconds, "seconds"))

    async def sleep_until(self, when: datetime) -> None:
        await self.sleep_until_ts(timestamp(when))

    async def sleep_until_ts(self, wake_at: float) -> None:
        position = self._durable.reserve()  # before any await, as in `step`
        await self._flush_events(position)
        await self._durable.sleep_until(wake_at, position)

    def sleep_sync(self, seconds: float | timedelta) -> None:
        run_sync(self.engine, "sleep_sync", lambda: self.sleep(seconds))

    async def create_token(self, timeout: float | timedelta | None = None) -> Token:
        """A token another process completes with `engine.complete_token(token.id, output)`."""
        seconds = None if timeout is None else duration(timeout, "timeout")
        return await self._durable.create_token(seconds)

    def create_token_sync(self, timeout: float | timedelta | None = None) -> Token:
        return run_sync(self.engine, "create_token_sync", lambda: self.create_token(timeout))

    async def wait_for_token(self, token: Token, type: Any = Any) -> Any:
        """The token's output (rehydrated as `type`), or `TokenTimeoutError` after its
        timeout. Suspends the run until then."""
        await self._flush_events()
        return await self._durable.wait_for_token(token, type)

    def wait_for_token_sync(self, token: Token, type: Any = Any) -> Any:
        return run_sync(
            self.engine, "wait_for_token_sync", lambda: self.wait_for_token(token, type)
        )

    # --- observability -----------------------------------------------------------------------

    def progress(self, data: Any) -> None:
        """Record a progress event (written with the next durable call or at attempt end).
        `data` must be JSON-serializable: checked here, where the mistake is made."""
        _check_json("data", data)
        self._buffer_event("progress", {"data": data})

    def _buffer_event(self, type_: str, data: dict[str, Any]) -> None:
        self._pending_events.append((type_, data))

    async def _flush_events(self, position: int | None = None) -> None:
        """Persist buffered progress/log events and changed metadata (fenced), unless the
        durable call at `position` (default: the next one) shows this code already ran."""
        if not self._pending_events and self.metadata == self._saved_metadata:
            return  # the usual case: nothing to write (a replay would write nothing either)
        storage = self._durable.storage
        now = self.engine.clock.time()
        if await self._durable.replaying(position):
            # This stretch of code already ran in an earlier execution, which recorded its
            # progress, logs and metadata: don't write them twice.
            self._pending_events.clear()
            self._saved_metadata = dict(self.metadata)
            return
        if self._pending_events:
            events, self._pending_events = self._pending_events, []
            await storage.append_events(self._durable.fence, events, now)
        if self.metadata != self._saved_metadata:
            snapshot = dict(self.metadata)
            _check_json("ctx.metadata", snapshot)
            if await storage.update_metadata(self._durable.fence, snapshot, now):
                self._saved_metadata = snapshot


def _check_json(option: str, value: Any) -> None:
    try:
        dumps(value)  # storage's own encoder: what it would refuse at the write
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(option, f"JSON-serializable values ({exc})", value) from None


def _retry(value: Any) -> RetryPolicy | None:
    if value is None or isinstance(value, RetryPolicy):
        return value
    raise InvalidOptionError("retry", "a RetryPolicy", value)
