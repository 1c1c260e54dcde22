"""The `Engine` facade: task registry, triggering, reads, and the in-process worker."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar, overload

from perdure.core.clock import Clock
from perdure.core.errors import (
    DuplicateRunError,
    DuplicateTaskError,
    ErrorInfo,
    InvalidOptionError,
    PerdureError,
    RunNotFoundError,
    TaskNotFoundError,
    TokenNotFoundError,
)
from perdure.core.ids import run_id as new_run_id
from perdure.core.limits import QueueLimits
from perdure.core.models import NewRun, Run, RunEvent, RunPage, StepRecord, TaskInfo
from perdure.core.retry import RetryPolicy
from perdure.core.serialization import ANY_CODEC, check_size
from perdure.core.statuses import RunStatus, parse_status
from perdure.engine.config import EngineOptions
from perdure.engine.context import RunContext
from perdure.engine.handle import RunHandle
from perdure.engine.queues import QueueOps
from perdure.engine.sync import Portal, run_sync
from perdure.engine.task import Task, TriggerOptions
from perdure.engine.trees import (
    LoopOutput,
    SleepingTask,
    make_loop,
    make_parent_task,
    make_sequence,
    make_sleeping_task,
    sleeping_token_id,
    sleeping_token_step,
)
from perdure.engine.waiters import RunWaiters
from perdure.engine.worker import Worker
from perdure.storage import (
    CHANNEL_CANCEL,
    CHANNEL_FINISHED,
    CHANNEL_WORK,
    Storage,
    make_storage,
)

log = logging.getLogger("perdure.engine")

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")

DEFAULT_IDEMPOTENCY_TTL = 30 * 24 * 3600.0


class TaskDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[[RunContext, In], Coroutine[Any, Any, Out]], /
    ) -> Task[In, Out]: ...
    @overload
    def __call__(
        self, fn: Callable[[RunContext], Coroutine[Any, Any, Out]], /
    ) -> Task[None, Out]: ...
    @overload
    def __call__(self, fn: Callable[[RunContext, In], Out], /) -> Task[In, Out]: ...
    @overload
    def __call__(self, fn: Callable[[RunContext], Out], /) -> Task[None, Out]: ...


class Engine(QueueOps):
    """Runs typed tasks durably. `Engine()` uses SQLite at `./.perdure/perdure.db`
    (`PERDURE_DATABASE_URL` overrides); `Engine("postgresql://…")` spans processes and hosts;
    `Engine("memory://")` is SQLite in memory."""

    def __init__(
        self,
        database_url: str | None = None,
        /,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | str | None = None,
        lease: float | timedelta | None = None,
        heartbeat: float | timedelta | None = None,
        poll_interval: float | timedelta | None = None,
        shutdown_grace: float | timedelta | None = None,
        max_children: int | None = None,
        max_payload_bytes: int | None = None,
        max_lost_leases: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.options = EngineOptions.resolve(
            {
                "database_url": database_url,
                "concurrency": concurrency,
                "queues": queues,
                "lease": lease,
                "heartbeat": heartbeat,
                "poll_interval": poll_interval,
                "shutdown_grace": shutdown_grace,
                "max_children": max_children,
                "max_payload_bytes": max_payload_bytes,
                "max_lost_leases": max_lost_leases,
                "clock": clock,
            }
        )
        self.clock = self.options.clock
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._storage: Storage | None = None
        self._home_loop: asyncio.AbstractEventLoop | None = None
        self._home_thread: int | None = None
        self._open_lock: asyncio.Lock | None = None
        self._portal: Portal | None = None
        self._portal_lock = threading.Lock()
        self._worker: Worker | None = None
        self._waiters: tuple[asyncio.AbstractEventLoop, RunWaiters] | None = None
        self._memory_used = False
        self._declared_queues: dict[str, QueueLimits] = {}

    def __repr__(self) -> str:
        return f"<Engine {self.url!r} tasks={len(self._tasks)}>"

    @property
    def url(self) -> str:
        return self.options.database_url

    # --- task definitions --------------------------------------------------------------------

    def task(
        self,
        *,
        id: str,
        queue: str = "default",
        timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        version: str | None = None,
    ) -> TaskDecorator:
        """Declare a task: `@engine.task(id="resize")` on `async def fn(ctx, input)` or `def`."""

        def decorator(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(
                Task(self, fn, id=id, queue=queue, timeout=timeout, retry=retry, version=version)
            )

        return decorator  # type: ignore[return-value]

    def _register(self, task: Task[Any, Any]) -> Task[Any, Any]:
        if task.id in self._tasks:
            raise DuplicateTaskError(
                f"task id {task.id!r} is already defined on this engine (by "
                f"{_qualname(self._tasks[task.id].fn)}); task ids must be unique"
            )
        self._tasks[task.id] = task
        return task

    def parent_task(
        self,
        *,
        id: str,
        finalize: Callable[..., Any] | Task[Any, Any] | None = None,
        queue: str = "default",
        timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        version: str | None = None,
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Declare a parent task: its function returns `Parent(output=..., children=[...])`;
        the children run in parallel, then `finalize` (a function `(ctx, FinalizeInput)` or a
        task) combines every child's settled result. Without finalize the parent's output is
        `{"output": ..., "children": [ChildResult, ...]}`."""

        def decorator(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(
                make_parent_task(
                    self,
                    fn,
                    id=id,
                    finalize=finalize,
                    queue=queue,
                    timeout=timeout,
                    retry=retry,
                    version=version,
                )
            )

        return decorator

    def sequence(self, id: str, tasks: Sequence[Task[Any, Any]]) -> Task[Any, Any]:
        """A task that runs `tasks` one after another, each output the next one's input."""
        return self._register(make_sequence(self, id, tasks))

    def loop(
        self,
        id: str,
        iteration_task: Task[Any, Any],
        max_iterations: int,
        sleep: float | timedelta = 0.0,
    ) -> Task[Any, LoopOutput[Any]]:
        """A task that runs `iteration_task` until it returns `LoopResult(done=True, ...)`,
        sleeping `sleep` between iterations; gives `LoopOutput(success=False)` after
        `max_iterations`."""
        return self._register(make_loop(self, id, iteration_task, max_iterations, sleep))

    def sleeping_task(
        self, *, id: str, timeout: float | timedelta, queue: str = "default", output: Any = Any
    ) -> SleepingTask[Any]:
        """A task whose run (input: a unique id) waits until `engine.wakeup(task, unique_id,
        completed=...)` or `failed=...`, or `timed_out` after `timeout`."""
        task = make_sleeping_task(self, id, timeout, queue, output)
        self._register(task)
        return task

    async def wakeup(
        self,
        task: SleepingTask[Any] | str,
        unique_id: str,
        *,
        completed: Any = None,
        failed: str | None = None,
    ) -> Run:
        """Wake a sleeping task's run with its output (or fail it with `failed=`). A run that
        already finished is returned unchanged; an unknown id raises RunNotFoundError."""
        task_id = task if isinstance(task, str) else task.id
        token_id = sleeping_token_id(task_id, unique_id)
        try:
            record = await self.complete_token(token_id, completed, error=failed)
        except TokenNotFoundError:
            raise RunNotFoundError(f"{task_id}:{unique_id}") from None
        return await self.get_run(record.run_id)

    def wakeup_sync(
        self,
        task: SleepingTask[Any] | str,
        unique_id: str,
        *,
        completed: Any = None,
        failed: str | None = None,
    ) -> Run:
        return run_sync(
            self,
            "wakeup_sync",
            lambda: self.wakeup(task, unique_id, completed=completed, failed=failed),
        )

    async def children(self, run_id: str) -> list[Run]:
        """The run's direct children, oldest first."""
        runs: list[Run] = []
        cursor: str | None = None
        while True:
            page = await self.list_runs(parent_id=run_id, limit=1000, cursor=cursor)
            runs.extend(page.runs)
            if page.next_cursor is None:
                return runs[::-1]
            cursor = page.next_cursor

    def children_sync(self, run_id: str) -> list[Run]:
        return run_sync(self, "children_sync", lambda: self.children(run_id))

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        return dict(self._tasks)

    def get_task(self, task_id: str) -> Task[Any, Any]:
        try:
            return self._tasks[task_id]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise TaskNotFoundError(
                f"unknown task {task_id!r}; tasks defined on this engine: {known}"
            ) from None

    # --- connection and lifecycle ------------------------------------------------------------

    async def _ensure_open(self) -> Storage:
        loop = asyncio.get_running_loop()
        if self._storage is not None and self._home_loop is loop:
            return self._storage
        if self._storage is not None and self._home_loop is not None:
            if self._home_loop.is_running() and not self._home_loop.is_closed():
                raise PerdureError(
                    "this engine is in use on another event loop (another thread); call its "
                    "*_sync methods from other threads instead"
                )
            self._storage = None  # its loop is gone; reconnect on this one
        if self._open_lock is None or self._home_loop is not loop:
            self._open_lock = asyncio.Lock()
            self._home_loop = loop
        async with self._open_lock:
            if self._storage is None:
                if self._memory_used:
                    raise PerdureError(
                        "this engine's in-memory database (memory://) was closed at shutdown "
                        "and its runs are gone; use a file database (sqlite:///path.db) to "
                        "read runs after shutdown"
                    )
                storage = make_storage(self.url)
                await storage.open()
                storage.add_listener(self._on_notification)
                self._storage = storage
                self._memory_used = not storage.is_shared
                self._home_thread = threading.get_ident()
                if self._declared_queues:
                    await storage.upsert_queues(
                        list(self._declared_queues.values()), self.clock.time()
                    )
        return self._storage

    async def open(self) -> Storage:
        """Connect and apply pending migrations (done lazily by every operation too)."""
        return await self._ensure_open()

    async def migrate(self) -> list[int]:
        """Apply pending migrations now; returns the versions applied (empty: up to date)."""
        if self._storage is None:
            # Opening migrates implicitly; open without it so the caller learns what ran.
            storage = make_storage(self.url)
            await storage.open(migrate=False)
            try:
                return await storage.migrate()
            finally:
                await storage.close()
        return await self._storage.migrate()

    async def start(self) -> None:
        """Start the in-process worker (claims and runs this engine's tasks)."""
        storage = await self._ensure_open()
        if self._worker is not None:
            return
        if not self._tasks:
            raise PerdureError(
                "no tasks are defined on this engine; define tasks with "
                "@engine.task(...) before starting a worker"
            )
        self._worker = Worker(self, storage, self.options, self._tasks)
        try:
            await self._worker.start()
        except BaseException:
            self._worker = None  # e.g. the database is down: a later start() tries again
            raise

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop claiming, let running attempts finish up to `grace` seconds (default
        `shutdown_grace`), release the rest to other workers, and close the connection."""
        if self._worker is not None:
            worker, self._worker = self._worker, None
            await worker.stop(grace)
        await self.close()

    async def close(self) -> None:
        if self._storage is not None:
            storage, self._storage = self._storage, None
            storage.remove_listener(self._on_notification)
            await storage.close()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    @property
    def worker_id(self) -> str | None:
        return None if self._worker is None else self._worker.id

    async def run_worker(self, stop: asyncio.Event | None = None) -> None:
        """Run a worker until `stop` is set (or the task is cancelled), then shut down."""
        await self.start()
        try:
            await (stop or asyncio.Event()).wait()
        finally:
            await asyncio.shield(self.shutdown())

    def wake(self) -> None:
        """Make the in-process worker look for due work now (e.g. after advancing a
        ManualClock), instead of at its next poll."""
        if self._worker is not None:
            self._worker.wake()

    async def run_maintenance(self) -> None:
        """Recover expired leases and expire TTLs now (the worker also does it periodically)."""
        storage = await self._ensure_open()
        if self._worker is not None:
            await self._worker.run_maintenance()
            return
        now = self.clock.time()
        await storage.recover_expired_leases(now, self.options.max_lost_leases)
        await storage.expire_runs(now)

    # --- triggering --------------------------------------------------------------------------

    async def trigger(
        self, task: str | Task[Any, Any], input: Any = None, **options: Any
    ) -> RunHandle[Any]:
        """Trigger by task id (or Task). An id not defined here is looked up in the catalog
        that workers register, so a client can trigger without importing the task code."""
        if isinstance(task, Task):
            return await task.trigger(input, **options)
        if task in self._tasks:
            return await self._tasks[task].trigger(input, **options)
        storage = await self._ensure_open()
        info = await storage.get_task(task)
        if info is None:
            known = sorted({*self._tasks, *(t.task_id for t in await storage.list_tasks())})
            raise TaskNotFoundError(
                f"unknown task {task!r}; known tasks: {', '.join(known) or 'none'} (a task is "
                "known once it is defined in this process or a worker that defines it started)"
            )
        handles: list[RunHandle[Any]] = await self._trigger_many(
            info, [input], TriggerOptions.build(**options)
        )
        return handles[0]

    async def _trigger_many(
        self, task: Task[Any, Out] | TaskInfo, inputs: Sequence[Any], options: TriggerOptions
    ) -> list[RunHandle[Out]]:
        storage = await self._ensure_open()
        now = self.clock.time()
        new_runs = self._new_runs(task, inputs, options, now=now)
        if isinstance(task, SleepingTask):
            return await self._create_sleeping(task, inputs, new_runs, now)
        if options.rate_limit == "reject":
            for queue, key in sorted({(r.queue, r.concurrency_key or "") for r in new_runs}):
                await storage.check_rate(queue, now, key or None)
        out_codec = task.output_codec if isinstance(task, Task) else None
        if options.debounce is not None:
            if len(new_runs) != 1:
                raise InvalidOptionError("debounce", "one input per trigger", len(new_runs))
            run, _ = await storage.debounce_run(new_runs[0], options.debounce.key, now)
            if self._worker is not None and run.available_at is not None:
                self._worker.wake_at(run.available_at.timestamp())
            return [RunHandle(self, run.id, out_codec)]
        results = await storage.create_runs(new_runs, now)
        if self._worker is not None and new_runs and new_runs[0].status is RunStatus.DELAYED:
            self._worker.wake_at(new_runs[0].available_at)
        return [RunHandle(self, run_id, out_codec) for run_id, _ in results]

    async def _create_sleeping(
        self, task: SleepingTask[Out], inputs: Sequence[Any], new_runs: list[NewRun], now: float
    ) -> list[RunHandle[Out]]:
        storage = await self._ensure_open()
        handles: list[RunHandle[Out]] = []
        for unique_id, new_run in zip(inputs, new_runs, strict=True):
            token = sleeping_token_step(new_run.id, task.id, unique_id, now + task.sleep_timeout)
            if not await storage.create_run_with_steps(new_run, [token], now):
                raise DuplicateRunError(
                    f"sleeping task {task.id!r} already has a run for unique id {unique_id!r}; "
                    "unique ids identify one run each (wake it with engine.wakeup)"
                )
            handles.append(RunHandle(self, new_run.id, task.output_codec))
        return handles

    def _new_runs(
        self,
        task: Task[Any, Any] | TaskInfo,
        inputs: Sequence[Any],
        options: TriggerOptions,
        *,
        now: float | None = None,
        parent: Run | None = None,
    ) -> list[NewRun]:
        """Validate inputs and build the rows to insert (raises before anything is stored)."""
        now = self.clock.time() if now is None else now
        if isinstance(task, Task):
            task_id, queue, codec = task.id, task.queue, task.input_codec
            max_attempts, timeout, version = task.retry.max_attempts, task.timeout, task.version
        else:
            task_id, queue, codec = task.task_id, task.queue, ANY_CODEC
            max_attempts, timeout, version = task.max_attempts, task.timeout, task.version
        if options.debounce is not None:
            available_at = now + options.debounce.window
        elif options.delay:
            available_at = now + options.delay
        elif options.run_at is not None:
            available_at = max(now, options.run_at)
        else:
            available_at = now
        status = RunStatus.DELAYED if available_at > now else RunStatus.QUEUED
        limit = self.options.max_payload_bytes
        if options.metadata is not None:
            check_size(_json_text(options.metadata), limit, "metadata", task_id)
        new_runs: list[NewRun] = []
        for value in inputs:
            validated = codec.validate(value, task_id=task_id)
            try:
                input_json = codec.dump_json(validated)
            except (TypeError, ValueError) as exc:
                raise InvalidOptionError("input", "a JSON-serializable value", value) from exc
            check_size(input_json, limit, "input", task_id)
            new_runs.append(
                NewRun(
                    id=new_run_id(now),
                    task_id=task_id,
                    queue=options.queue or queue,
                    input_json=input_json,
                    status=status,
                    available_at=available_at,
                    max_attempts=max_attempts,
                    priority=options.priority,
                    timeout=timeout,
                    version=version,
                    expires_at=None if options.ttl is None else now + options.ttl,
                    idempotency_key=options.idempotency_key,
                    idempotency_expires_at=None
                    if options.idempotency_key is None
                    else now + (options.idempotency_ttl or DEFAULT_IDEMPOTENCY_TTL),
                    concurrency_key=options.concurrency_key,
                    tags=list(options.tags),
                    metadata=dict(options.metadata or {}),
                    parent_id=None if parent is None else parent.id,
                    root_id=None if parent is None else (parent.root_id or parent.id),
                )
            )
        return new_runs

    async def complete_token(
        self, token_id: str, output: Any = None, *, error: str | None = None
    ) -> StepRecord:
        """Complete a run's wait token from any process (or fail it with `error=`). The first
        completion wins; later ones return the recorded one unchanged."""
        storage = await self._ensure_open()
        try:
            output_json = _json_text(output)
        except (TypeError, ValueError) as exc:
            raise InvalidOptionError("output", "a JSON-serializable value", output) from exc
        check_size(output_json, self.options.max_payload_bytes, "token output")
        failure = (
            None
            if error is None
            else ErrorInfo(type="TokenFailedError", message=error, retryable=False)
        )
        record, _changed = await storage.complete_token(
            token_id, None if error is not None else output_json, failure, self.clock.time()
        )
        if record is None:
            raise TokenNotFoundError(
                f"unknown token {token_id!r}: tokens are created in a task body with "
                "`token = await ctx.create_token()` and completed with `token.id`"
            )
        return record

    def complete_token_sync(
        self, token_id: str, output: Any = None, *, error: str | None = None
    ) -> StepRecord:
        return run_sync(
            self, "complete_token_sync", lambda: self.complete_token(token_id, output, error=error)
        )

    async def replay(self, run_id: str) -> RunHandle[Any]:
        """Start a new run of the same task with the same input (any run, any status)."""
        source = await self.get_run(run_id)
        task = await self._task_or_info(source.task_id)
        handles: list[RunHandle[Any]] = await self._trigger_many(
            task,
            [source.input],
            TriggerOptions.build(
                queue=source.queue,
                priority=source.priority,
                tags=source.tags,
                concurrency_key=source.concurrency_key,
            ),
        )
        return handles[0]

    async def fork(self, run_id: str, from_step: str | int) -> RunHandle[Any]:
        """Start a new run with the same input that reuses the source's recorded durable
        calls before `from_step` (a step name, or a position), and runs the rest anew."""
        storage = await self._ensure_open()
        source = await self.get_run(run_id)
        steps = await storage.load_steps(run_id)
        if isinstance(from_step, int) and not isinstance(from_step, bool):
            upto = from_step
        else:
            found = [s.position for s in steps if s.kind == "step" and s.name == from_step]
            if not found:
                names = ", ".join(dict.fromkeys(s.name for s in steps if s.kind == "step"))
                raise InvalidOptionError(
                    "from_step", f"a step of run {run_id} ({names})", from_step
                )
            upto = found[0]
        # Stop before the first record that cannot be reused (a pending wait or a token).
        for record in steps:
            if record.position < upto and (record.status == "pending" or record.kind == "token"):
                upto = record.position
                break
        task = await self._task_or_info(source.task_id)
        options = TriggerOptions.build(
            queue=source.queue,
            priority=source.priority,
            tags=source.tags,
            concurrency_key=source.concurrency_key,
        )
        new_run = self._new_runs(task, [source.input], options)[0]
        await storage.fork_run(new_run, run_id, upto, self.clock.time())
        out_codec = task.output_codec if isinstance(task, Task) else None
        return RunHandle(self, new_run.id, out_codec)

    async def _task_or_info(self, task_id: str) -> Task[Any, Any] | TaskInfo:
        if task_id in self._tasks:
            return self._tasks[task_id]
        storage = await self._ensure_open()
        info = await storage.get_task(task_id)
        if info is None:
            raise TaskNotFoundError(
                f"task {task_id!r} is neither defined here nor registered by a worker"
            )
        return info

    def replay_sync(self, run_id: str) -> RunHandle[Any]:
        return run_sync(self, "replay_sync", lambda: self.replay(run_id))

    def fork_sync(self, run_id: str, from_step: str | int) -> RunHandle[Any]:
        return run_sync(self, "fork_sync", lambda: self.fork(run_id, from_step))

    # --- reading and controlling runs --------------------------------------------------------

    def handle(self, run_id: str) -> RunHandle[Any]:
        """A handle for any run id, from any process."""
        return RunHandle(self, run_id)

    async def get_run(self, run_id: str) -> Run:
        storage = await self._ensure_open()
        run = await storage.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    async def list_runs(
        self,
        *,
        task_id: str | None = None,
        status: str | None = None,
        queue: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs newest first; pass the page's `next_cursor` as `cursor` for the next page."""
        if status is not None:
            status = parse_status(status).value
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidOptionError("limit", "an integer from 1 to 1000", limit)
        storage = await self._ensure_open()
        return await storage.list_runs(
            status=status,
            task_id=task_id,
            queue=queue,
            parent_id=parent_id,
            limit=limit,
            cursor=cursor,
        )

    async def cancel(self, run_id: str, reason: str = "cancelled") -> Run:
        """Cancel a run that has not finished (a finished run is returned unchanged). A running
        attempt is stopped: its `ctx.cancelled` is set and its coroutine cancelled."""
        storage = await self._ensure_open()
        run, _changed = await storage.cancel_run(run_id, self.clock.time(), reason)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    async def events(self, run_id: str, after_seq: int = 0, limit: int = 1000) -> list[RunEvent]:
        """The run's event history after `after_seq`, in order."""
        storage = await self._ensure_open()
        events = await storage.get_events(run_id, after_seq, limit)
        if not events and after_seq == 0 and await storage.get_run(run_id) is None:
            raise RunNotFoundError(run_id)
        return events

    async def subscribe(self, run_id: str, after_seq: int = 0) -> AsyncIterator[RunEvent]:
        """Yield the run's events as they are appended, until the run has finished."""
        seq = after_seq
        poll = 0.01
        while True:
            run = await self.get_run(run_id)
            batch = await self.events(run_id, seq)
            for event in batch:
                seq = event.seq
                yield event
            if batch:
                poll = 0.01
                continue
            if run.status.is_terminal:
                return
            await self._wait_notified(run_id, poll)
            poll = min(poll * 2, self.options.poll_interval)

    async def _wait_finished(self, run_id: str, timeout: float | None) -> Run:
        try:
            return await self._run_waiters().finished(run_id, timeout)
        except TimeoutError:
            status = (await self.get_run(run_id)).status.value
            raise TimeoutError(
                f"run {run_id} did not finish within {timeout}s (status {status})"
            ) from None

    async def _wait_notified(self, run_id: str, timeout: float) -> None:
        await self._run_waiters().notified(run_id, timeout)

    def _run_waiters(self) -> RunWaiters:
        """The waiters of the running loop (the home loop; a new one after a loop change)."""
        loop = asyncio.get_running_loop()
        if self._waiters is None or self._waiters[0] is not loop:
            self._waiters = (loop, RunWaiters(self._read_runs, self.options.poll_interval))
        return self._waiters[1]

    async def _read_runs(self, run_ids: Sequence[str], known: bool) -> dict[str, Run | None]:
        storage = await self._ensure_open()
        return await storage.finished_runs(run_ids, known=known)

    def _attempt_finished(self, run_id: str) -> None:
        if self._waiters is not None:
            self._waiters[1].wake(run_id)

    def _on_notification(self, channel: str, payload: str) -> None:
        loop = self._home_loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() != self._home_thread:
            loop.call_soon_threadsafe(self._on_notification_here, channel, payload)
        else:
            self._on_notification_here(channel, payload)

    def _on_notification_here(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_WORK:
            if self._worker is not None:
                self._worker.wake()
        elif channel == CHANNEL_FINISHED:
            if payload:
                self._attempt_finished(payload)
            elif self._waiters is not None:  # "look again" (a reconnect, an oversized batch)
                self._waiters[1].wake_all()
        elif channel == CHANNEL_CANCEL and self._worker is not None:
            if payload:
                self._worker.cancel_local(payload)
            else:  # "look again": some run was cancelled; the ownership check finds which
                self._worker.check_leases()

    # --- blocking twins ----------------------------------------------------------------------

    def _portal_for_sync(self) -> Portal:
        with self._portal_lock:
            if self._portal is None:
                self._portal = Portal()
            return self._portal

    def trigger_sync(
        self, task: str | Task[Any, Any], input: Any = None, **options: Any
    ) -> RunHandle[Any]:
        return run_sync(self, "trigger_sync", lambda: self.trigger(task, input, **options))

    def get_run_sync(self, run_id: str) -> Run:
        return run_sync(self, "get_run_sync", lambda: self.get_run(run_id))

    def list_runs_sync(self, **filters: Any) -> RunPage:
        return run_sync(self, "list_runs_sync", lambda: self.list_runs(**filters))

    def cancel_sync(self, run_id: str, reason: str = "cancelled") -> Run:
        return run_sync(self, "cancel_sync", lambda: self.cancel(run_id, reason))

    def events_sync(self, run_id: str, after_seq: int = 0) -> list[RunEvent]:
        return run_sync(self, "events_sync", lambda: self.events(run_id, after_seq))

    def migrate_sync(self) -> list[int]:
        return run_sync(self, "migrate_sync", self.migrate)

    def close_sync(self) -> None:
        """Close the connection and the background loop used by the `_sync` methods."""
        if self._portal is not None:
            run_sync(self, "close_sync", self.shutdown)
            self._portal.stop()
            self._portal = None


def _qualname(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", "?")
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
