"""Durable calls inside a task body: steps, sleeps, wait tokens and child waits.

Every durable call takes the next position of the run, synchronously at call time, so the
order is stable across executions (also under `asyncio.gather`, which starts coroutines in
order). On a re-execution, a recorded position returns its recorded value instead of running
again; a different call at a recorded position raises `NonDeterminismError`. A wait that is
not yet satisfied raises `Suspend`: the worker releases the slot and the run resumes (by
replay) on any worker when its waitpoint settles.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import typing
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from perdure.core.errors import (
    DuplicateRunError,
    ErrorInfo,
    InvalidOptionError,
    NonDeterminismError,
    NonRetryableError,
    OutputValidationError,
    PerdureError,
    StepFailedError,
    TokenTimeoutError,
)
from perdure.core.ids import new_id
from perdure.core.models import NewRun, Run, RunResult, StepRecord
from perdure.core.retry import RetryPolicy, to_seconds
from perdure.core.serialization import SerializationErrors, codec_for, describe_type
from perdure.core.statuses import RunStatus
from perdure.engine.groups import spawn_commits, step_loads
from perdure.storage import Storage
from perdure.storage.steps import STEP_COMPLETED, STEP_FAILED, STEP_PENDING, Fence, Spawn

if TYPE_CHECKING:
    from perdure.engine.context import RunContext
    from perdure.engine.task import Task, TriggerOptions

T = TypeVar("T")

#: Sleeps up to this long stay in process; longer ones suspend the run.
SUSPEND_THRESHOLD = 5.0

current_context: contextvars.ContextVar[RunContext] = contextvars.ContextVar("perdure_ctx")


class Suspend(BaseException):
    """Unwinds a task body that must wait; task code must not catch it (BaseException)."""

    def __init__(
        self,
        wait_positions: Sequence[int],
        wake_at: float | None,
        status: RunStatus = RunStatus.SUSPENDED,
        *,
        committed: bool = False,
    ) -> None:
        super().__init__("run suspended")
        self.wait_positions = list(wait_positions)
        self.wake_at = wake_at
        self.status = status
        #: The suspension was already committed (with the children it waits for): the worker
        #: only releases the slot.
        self.committed = committed


class StartsWithSteps(Protocol):
    """A task whose new runs start with durable records (a sleeping task's wake-up token),
    stored in the transaction that creates the run, so they exist before it first runs."""

    def initial_steps(self, run_id: str, input: Any, now: float) -> list[StepRecord]: ...


class LeaseLost(BaseException):
    """A fenced durable write found the attempt no longer owns the run: stop at once."""


@dataclass(frozen=True, slots=True)
class Token:
    """A wait token: give `id` to whoever completes it (`engine.complete_token(id, output)`)."""

    id: str
    position: int
    timeout_at: float | None


def context_or_error(what: str) -> RunContext:
    try:
        return current_context.get()
    except LookupError:
        raise PerdureError(
            f"{what} must be called inside a task body (it waits durably); outside a task use "
            "`handle = await task.trigger(input)` and `await handle.result()`"
        ) from None


class Durable:
    """The replay state of one attempt; RunContext delegates its durable methods here."""

    def __init__(self, ctx: RunContext, run: Run, worker_id: str) -> None:
        # A weak reference: the context owns this object, and a cycle between the two would
        # leave every attempt's state for the cyclic garbage collector (a large share of a
        # busy worker's CPU) instead of freeing it when the attempt ends.
        self._ctx = weakref.ref(ctx)
        self.run = run
        self.fence = Fence(run.id, run.attempt, worker_id)
        self.position = 0
        self.recorded: dict[int, StepRecord] | None = None
        #: A suspension of this attempt is being committed: from its commit on, the run is no
        #: longer `running`, which a lease check must not take for a lost lease.
        self.suspending = False

    @property
    def ctx(self) -> RunContext:
        ctx = self._ctx()
        if ctx is None:  # unreachable while a body runs: its context outlives the attempt
            raise LeaseLost(f"run {self.run.id}: the attempt's context is gone")
        return ctx

    @property
    def storage(self) -> Storage:
        storage = self.ctx.engine._storage  # pyright: ignore[reportPrivateUsage]
        if storage is None:  # the engine closed under a running attempt
            raise LeaseLost(f"run {self.run.id}: the engine's connection is closed")
        return storage

    @property
    def now(self) -> float:
        return self.ctx.engine.clock.time()

    def reserve(self, n: int = 1) -> int:
        first = self.position
        self.position += n
        return first

    async def _load(self) -> dict[int, StepRecord]:
        if self.recorded is None:
            storage = self.storage
            steps = await step_loads(storage).load(self.run.id, storage)
            # Concurrent calls (asyncio.gather) may load at once: the first result stays,
            # since it already holds what this attempt recorded since.
            if self.recorded is None:
                self.recorded = {s.position: s for s in steps}
        return self.recorded

    async def replaying(self, position: int | None = None) -> bool:
        """Whether the durable call at `position` (default: the next one) was already
        recorded by an earlier execution."""
        if self.run.attempt == 1 and self.recorded is None:
            return False  # a first execution has no history to replay
        return (self.position if position is None else position) in await self._load()

    async def lookup(self, position: int, kind: str, name: str) -> StepRecord | None:
        return self._match((await self._load()).get(position), position, kind, name)

    def _match(
        self, record: StepRecord | None, position: int, kind: str, name: str
    ) -> StepRecord | None:
        """`record`, the one at `position`, if it is the durable call the code makes there."""
        if record is not None and (record.kind != kind or record.name != name):
            raise NonDeterminismError(
                f"run {self.run.id} of task {self.run.task_id!r}: at durable call #{position} "
                f"the code now calls {kind} {name!r}, but the history recorded {record.kind} "
                f"{record.name!r} there. Task code must make the same durable calls in the "
                "same order on every execution; deploy changed code as a new task version."
            )
        return record

    async def record(
        self,
        steps: Sequence[StepRecord],
        children: Sequence[NewRun] = (),
        child_steps: Sequence[StepRecord] = (),
    ) -> None:
        storage = self.storage
        await self._written(
            lambda: storage.record_steps(
                self.fence, steps, self.now, children=children, child_steps=child_steps
            )
        )
        if self.recorded is not None:
            for step in steps:
                self.recorded[step.position] = step

    async def _written(self, write: Callable[[], Awaitable[bool]]) -> None:
        """A fenced write, tried again through a database outage (`Worker.durable_write`): a
        lost lease stops the attempt; a token id that is taken (the same ids would collide on
        every retry) fails the run without retry."""
        worker = self.ctx.engine._worker  # pyright: ignore[reportPrivateUsage]
        try:
            ok = await (write() if worker is None else worker.durable_write(write))
        except DuplicateRunError as exc:
            raise NonRetryableError(
                f"run {self.run.id} of task {self.run.task_id!r}: {exc}"
            ) from exc
        if not ok:
            raise LeaseLost(f"run {self.run.id} attempt {self.run.attempt} lost its lease")

    def _step(self, position: int, kind: str, name: str, status: str, **fields: Any) -> StepRecord:
        return StepRecord(
            run_id=self.run.id,
            position=position,
            kind=kind,
            name=name,
            status=status,
            attempt=self.run.attempt,
            **fields,
        )

    # --- steps -------------------------------------------------------------------------------

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy | None,
        in_thread: bool = False,
        position: int | None = None,
    ) -> Any:
        _check_name(name)
        position = self.reserve() if position is None else position
        codec = codec_for(_return_type(fn))
        record = await self.lookup(position, "step", name)
        if record is not None:
            return _replayed(record, codec)
        failures = 0
        while True:
            if self.ctx.cancelled.is_set():
                # Stopped (cancelled, timed out, lease lost, released at shutdown): a body
                # that runs on, as a `def` body does in its thread, starts no new side effect.
                raise LeaseLost(f"run {self.run.id} was stopped; step {name!r} did not run")
            try:
                if in_thread:
                    result = await asyncio.get_running_loop().run_in_executor(
                        None, _call_in_context(fn, args, kwargs)
                    )
                else:
                    result = fn(*args, **kwargs)
                    if inspect.isawaitable(result):
                        result = await result
                break
            except NonRetryableError as exc:
                error = ErrorInfo.from_exception(exc, retryable=False)
                await self.record([self._step(position, "step", name, STEP_FAILED, error=error)])
                raise
            except Exception:
                failures += 1
                if retry is None or failures >= retry.max_attempts:
                    raise  # not recorded: the run's own retry policy decides
                await asyncio.sleep(retry.delay(failures))
        try:
            output = codec.to_jsonable(result)
        except SerializationErrors as exc:
            raise OutputValidationError(
                f"step {name!r} of run {self.run.id} returned {type(result).__name__}, which "
                f"does not serialize as {describe_type(codec.type)}: {exc}"
            ) from None
        await self.record([self._step(position, "step", name, STEP_COMPLETED, output=output)])
        # Return what a replay would return, so first and later executions see the same value.
        return codec.load(output)

    # --- sleeps ------------------------------------------------------------------------------

    async def sleep_until(self, wake_at: float, position: int | None = None) -> None:
        position = self.reserve() if position is None else position
        record = await self.lookup(position, "sleep", "sleep")
        if record is None:
            record = self._step(position, "sleep", "sleep", STEP_COMPLETED, wake_at=wake_at)
            await self.record([record])
        due = record.wake_at or 0.0
        remaining = due - self.now
        if remaining <= 0:
            return
        if remaining <= SUSPEND_THRESHOLD:
            await asyncio.sleep(remaining)
            return
        raise Suspend([], due)

    # --- tokens ------------------------------------------------------------------------------

    async def create_token(self, timeout: float | None, token_id: str | None = None) -> Token:
        position = self.reserve()
        record = await self.lookup(position, "token", "token")
        if record is None:
            timeout_at = None if timeout is None else self.now + timeout
            token_id = token_id or new_id("tok")
            record = self._step(
                position,
                "token",
                "token",
                STEP_PENDING,
                wake_at=timeout_at,
                token_id=token_id,
                batch=position,
            )
            await self.record([record])
        assert record.token_id is not None
        return Token(id=record.token_id, position=position, timeout_at=record.wake_at)

    async def wait_for_token(self, token: Token, out_type: Any = Any) -> Any:
        record = await self.storage.get_token(token.id)
        if record is None or record.run_id != self.run.id:
            raise PerdureError(f"token {token.id!r} does not belong to run {self.run.id}")
        timed_out = record.wake_at is not None and record.wake_at <= self.now
        if record.status == STEP_PENDING and timed_out:
            # Settle the token as timed out (the first settlement wins), so a completion
            # arriving later cannot change what a replay of this run sees.
            message = f"token {token.id} of run {self.run.id} was not completed before its timeout"
            timeout = ErrorInfo(TokenTimeoutError.__name__, message, retryable=False)
            settled, _ = await self.storage.complete_token(token.id, None, timeout, self.now)
            record = settled or record
        if record.status == STEP_COMPLETED:
            return codec_for(out_type).load(record.output)
        if record.status == STEP_FAILED:
            error = record.error
            if error is not None and error.type == TokenTimeoutError.__name__:
                raise TokenTimeoutError(error.message)
            raise StepFailedError(
                f"token {token.id} was failed: {error.message if error else 'no reason given'}"
            )
        raise Suspend([record.position], record.wake_at)

    # --- child runs --------------------------------------------------------------------------

    async def trigger_and_wait(
        self, task: Task[Any, T], inputs: Sequence[Any], options: TriggerOptions
    ) -> list[RunResult[T]]:
        results = await self.spawn_and_wait([(task, value) for value in inputs], options)
        return typing.cast(list[RunResult[T]], results)

    async def spawn_and_wait(
        self,
        children: Sequence[tuple[Task[Any, Any], Any]],
        options: TriggerOptions,
        status: RunStatus = RunStatus.SUSPENDED,
        *,
        suspend_now: bool = False,
    ) -> list[RunResult[Any]]:
        """Start child runs (one transaction, at consecutive positions) and wait, as `status`,
        until all have settled; their results come back in order, failed ones included.

        `suspend_now`: the body makes no other durable call meanwhile (a tree node), so the
        run suspends in the transaction that creates the children instead of one more after
        the body unwinds."""
        n = len(children)
        if n == 0:
            return []
        limit = self.ctx.engine.options.max_children
        if n > limit:  # the same children would be refused on every retry
            raise NonRetryableError(
                f"{n} children requested by run {self.run.id}; the limit is "
                f"{limit} (engine option max_children)"
            )
        first = self.reserve(n)
        positions = list(range(first, first + n))
        recorded = await self._load()
        records = [
            self._match(recorded.get(p), p, "child", task.id)
            for p, (task, _) in zip(positions, children, strict=True)
        ]
        if all(r is None for r in records):
            new_runs = self._new_children(children, options)
            steps = [
                self._step(p, "child", task.id, STEP_PENDING, child_run_id=c.id, batch=first)
                for p, (task, _), c in zip(positions, children, new_runs, strict=True)
            ]
            now = self.now
            child_steps = [
                step
                for (task, value), c in zip(children, new_runs, strict=True)
                # hasattr, not a runtime-checkable Protocol: isinstance on those is slow
                if hasattr(task, "initial_steps")
                for step in typing.cast(StartsWithSteps, task).initial_steps(c.id, value, now)
            ]
            if not suspend_now:
                await self.record(steps, new_runs, child_steps)
                raise Suspend(positions, None, status)
            # Buffered progress, logs and metadata go first: once the run is suspended, no
            # write of this attempt passes the fence any more.
            await self.ctx._flush_events(first)  # pyright: ignore[reportPrivateUsage]
            spawn = Spawn(self.fence, steps, new_runs, child_steps, status)
            storage = self.storage
            self.suspending = True  # if the write fails, the body fails: no write follows
            clock = self.ctx.engine.clock
            await self._written(lambda: spawn_commits(storage).submit(spawn, storage, clock))
            raise Suspend(positions, None, status, committed=True)
        if any(r is None or r.status == STEP_PENDING for r in records):
            raise Suspend(positions, None, status)
        return [_child_result(r, task) for r, (task, _) in zip(records, children, strict=True) if r]

    def _new_children(
        self, children: Sequence[tuple[Task[Any, Any], Any]], options: TriggerOptions
    ) -> list[NewRun]:
        """Validated rows of new child runs, in order; one `_new_runs` call per run of
        consecutive children of the same task (a parent's children usually share one)."""
        engine = self.ctx.engine
        new_runs: list[NewRun] = []
        for task, group in itertools.groupby(children, key=lambda c: c[0]):
            inputs = [value for _, value in group]
            new_runs += engine._new_runs(task, inputs, options, parent=self.run)  # pyright: ignore[reportPrivateUsage]
        return new_runs


def _child_result(record: StepRecord, task: Task[Any, T]) -> RunResult[T]:
    settled: dict[str, Any] = record.output or {}
    status = RunStatus(settled.get("status", "failed"))
    error = settled.get("error")
    ok = status is RunStatus.COMPLETED
    output = task.output_codec.load(settled.get("output")) if ok else None
    return RunResult(
        ok=ok,
        output=output,
        status=status,
        run_id=record.child_run_id,
        error=None if error is None else ErrorInfo.from_json(error),
    )


def _replayed(record: StepRecord, codec: Any) -> Any:
    if record.status == STEP_FAILED:
        error = record.error
        raise StepFailedError(
            f"step {record.name!r} failed earlier in this run: "
            f"{error.type + ': ' + error.message if error else 'unknown error'}"
        )
    return codec.load(record.output)


_RETURN_TYPES: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def _return_type(fn: Callable[..., Any]) -> Any:
    """The annotated return type of a step function (cached: steps are the hot path)."""
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    try:
        found: Any = typing.get_type_hints(fn).get("return", Any)
    except Exception:  # unresolvable annotations: keep the raw JSON value
        found = Any
    with contextlib.suppress(TypeError):  # not weak-referenceable: just don't cache
        _RETURN_TYPES[fn] = found
    return found


def _call_in_context(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Any]:
    ctx = contextvars.copy_context()
    return lambda: ctx.run(fn, *args, **kwargs)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidOptionError("name", "a non-empty step name", name)


def duration(value: float | timedelta, option: str = "duration") -> float:
    return to_seconds(value, option)


def timestamp(when: datetime) -> float:
    if when.tzinfo is None:
        raise InvalidOptionError("when", "a timezone-aware datetime", when)
    return when.timestamp()
