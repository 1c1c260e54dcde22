"""Task trees (the `durable-execution` model) on the durable-function machinery.

A parent task, a sequence and a loop are task bodies that wait for child runs through the same
waitpoints as `trigger_and_wait`: the parent's function runs once (recorded as a step), its
children are created in one transaction, and the parent waits as `waiting_for_children` (or
`waiting_for_finalize` for a finalize task), holding no slot. A child's settlement and the
parent's wake-up commit together, so a parent never misses the moment its last child ends.
"""

from __future__ import annotations

import inspect
import itertools
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from perdure.core.errors import (
    ConfigurationError,
    ErrorInfo,
    FinalizeFailedError,
    InputValidationError,
    InvalidOptionError,
    NonRetryableError,
    TaskTimeoutError,
    TokenTimeoutError,
)
from perdure.core.models import RunResult, StepRecord
from perdure.core.retry import RetryPolicy, to_seconds
from perdure.core.serialization import (
    Codec,
    SerializationErrors,
    check_size,
    codec_for,
    describe_type,
)
from perdure.core.statuses import RunStatus
from perdure.engine.context import RunContext
from perdure.engine.durable import Durable
from perdure.engine.task import Task, TriggerOptions, signature_types
from perdure.storage.steps import STEP_PENDING

if TYPE_CHECKING:
    from perdure.engine.engine import Engine

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")

_NO_OPTIONS = TriggerOptions()


@dataclass(frozen=True, slots=True)
class ChildSpec(Generic[In]):
    """One child of a parent: made with `child(task, input)`."""

    task: Task[In, Any]
    input: In


def child(task: Task[In, Any], input: In) -> ChildSpec[In]:
    """A child run for `Parent(children=[...])`; `input` is checked against the task's type."""
    return ChildSpec(task, input)


@dataclass(frozen=True, slots=True)
class Parent(Generic[T]):
    """What a parent task's function returns: its own output and the children to run."""

    output: T | None = None
    children: Sequence[ChildSpec[Any]] = field(default_factory=list[ChildSpec[Any]])


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A child's settled result, as finalize sees it (failed and cancelled ones included)."""

    status: RunStatus
    output: Any = None
    error: ErrorInfo | None = None
    run_id: str | None = None
    task_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class FinalizeInput(Generic[T]):
    """What finalize receives: the parent function's output and every child's result."""

    output: T | None
    children: list[ChildResult]


@dataclass(frozen=True, slots=True)
class LoopResult(Generic[T]):
    """What a loop's iteration task returns: `done=True` with the output ends the loop."""

    done: bool
    output: T | None = None


@dataclass(frozen=True, slots=True)
class LoopOutput(Generic[T]):
    """A loop's output: `success` is False when `max_iterations` ran out first."""

    success: bool
    output: T | None = None
    iterations: int = 0


# --- parent tasks ----------------------------------------------------------------------------

Finalize = Callable[..., Any] | Task[Any, Any] | None


def make_parent_task(
    engine: Engine,
    fn: Callable[..., Any],
    *,
    id: str,
    finalize: Finalize,
    queue: str,
    timeout: float | timedelta | None,
    retry: RetryPolicy | None,
    version: str | None,
) -> Task[Any, Any]:
    declared_in, _, takes_input = signature_types(fn, id)
    in_type = declared_in if takes_input else type(None)
    finalize_task: Task[Any, Any] | None = None
    finalize_fn: Callable[..., Any] | None = None
    if isinstance(finalize, Task):
        finalize_task = typing.cast(Task[Any, Any], finalize)
    elif finalize is not None:
        if not callable(finalize):
            raise InvalidOptionError(
                "finalize", "a function (ctx, FinalizeInput) or a Task", finalize
            )
        finalize_fn = finalize
    out_type: Any = Any
    if finalize_task is not None:
        out_type = finalize_task.output_codec.type
    elif finalize_fn is not None:
        out_type = _declared_return(finalize_fn)

    parent_output = _parent_output_codec(fn)

    async def body(ctx: RunContext, input: Any = None) -> Any:
        durable = ctx._durable  # pyright: ignore[reportPrivateUsage]
        plan = await ctx.step("parent", _run_parent, fn, ctx, input, takes_input, parent_output)
        specs = [(engine.get_task(c["task_id"]), c["input"]) for c in plan["children"]]
        results = await _spawn(
            durable, specs, RunStatus.WAITING_FOR_CHILDREN, NonRetryableError, f"parent {id!r}"
        )
        children = [_child_result(r, task.id) for r, (task, _) in zip(results, specs, strict=True)]
        output = None if plan["output"] is None else parent_output.load(plan["output"])
        final_input = FinalizeInput(output=output, children=children)
        if finalize_task is not None:
            [outcome] = await _spawn(
                durable,
                [(finalize_task, final_input)],
                RunStatus.WAITING_FOR_FINALIZE,
                FinalizeFailedError,
                f"parent {id!r} could not start its finalize task {finalize_task.id!r}",
            )
            if not outcome.ok:
                raise FinalizeFailedError(
                    f"finalize task {finalize_task.id!r} of parent {id!r} ended "
                    f"{outcome.status.value}: {_reason(outcome.error)}"
                )
            return outcome.output
        if finalize_fn is None:
            return {"output": plan["output"], "children": children}
        try:
            return await ctx.step("finalize", _call_finalize, finalize_fn, ctx, final_input)
        except Exception as exc:
            raise FinalizeFailedError(
                f"finalize of parent {id!r} failed: {type(exc).__name__}: {exc}"
            ) from exc

    return Task(
        engine,
        body,
        id=id,
        queue=queue,
        timeout=timeout,
        retry=retry,
        version=version,
        types=(in_type, out_type),
    )


async def _run_parent(
    fn: Callable[..., Any],
    ctx: RunContext,
    input: Any,
    takes_input: bool,
    output_codec: Codec[Any],
) -> dict[str, Any]:
    """Run the parent's function once; what it returns is recorded in a JSON form (task ids
    and validated inputs), so a replay rebuilds the same children without calling it."""
    result = fn(ctx, input) if takes_input else fn(ctx)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Parent):
        raise NonRetryableError(
            f"parent task {ctx.task_id!r} returned {type(result).__name__}; a parent task "
            "returns Parent(output=..., children=[child(task, input), ...])"
        )
    parent = typing.cast(Parent[Any], result)
    options = ctx.engine.options
    if len(parent.children) > options.max_children:  # the same on every retry: fail at once
        raise NonRetryableError(
            f"parent task {ctx.task_id!r} returned {len(parent.children)} children; the limit "
            f"is {options.max_children} per parent (engine option max_children)"
        )
    children: list[dict[str, Any]] = []
    for i, spec in enumerate(parent.children):
        if not isinstance(spec, ChildSpec):
            raise NonRetryableError(
                f"parent task {ctx.task_id!r}: children must be made with child(task, input)"
            )
        task = spec.task
        try:
            value = task.input_codec.validate(spec.input, task_id=task.id)
            check_size(
                task.input_codec.dump_json(value), options.max_payload_bytes, "input", task.id
            )
        except InputValidationError as exc:  # the same input fails on every retry
            raise NonRetryableError(f"parent task {ctx.task_id!r}, child {i}: {exc}") from exc
        children.append({"task_id": task.id, "input": task.input_codec.to_jsonable(value)})
    try:
        output = None if parent.output is None else output_codec.to_jsonable(parent.output)
    except SerializationErrors as exc:
        raise NonRetryableError(
            f"parent task {ctx.task_id!r}: its output {type(parent.output).__name__} does not "
            f"serialize as {describe_type(output_codec.type)}: {exc}"
        ) from None
    return {"output": output, "children": children}


async def _call_finalize(fn: Callable[..., Any], ctx: RunContext, data: FinalizeInput[Any]) -> Any:
    result = fn(ctx, data)
    if inspect.isawaitable(result):
        result = await result
    return result


# --- sequences and loops ---------------------------------------------------------------------


def make_sequence(engine: Engine, id: str, tasks: Sequence[Task[Any, Any]]) -> Task[Any, Any]:
    if not tasks:
        raise InvalidOptionError("tasks", "a non-empty list of tasks", tasks)
    for i, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise InvalidOptionError(f"tasks[{i}]", "a Task", task)
    for i, (a, b) in enumerate(itertools.pairwise(tasks)):
        produced, expected = a.output_codec.type, b.input_codec.type
        if not _compatible(produced, expected):
            raise ConfigurationError(
                f"sequence {id!r}: step {i} ({a.id!r}) returns {_name(produced)} but step "
                f"{i + 1} ({b.id!r}) takes {_name(expected)}"
            )

    async def body(ctx: RunContext, input: Any) -> Any:
        durable = ctx._durable  # pyright: ignore[reportPrivateUsage]
        value = input
        for i, task in enumerate(tasks):
            [result] = await _spawn(
                durable,
                [(task, value)],
                RunStatus.WAITING_FOR_CHILDREN,
                FinalizeFailedError,
                f"sequence {id!r} could not start step {i} (task {task.id!r})",
            )
            if not result.ok:
                raise FinalizeFailedError(
                    f"sequence {id!r} failed at step {i} (task {task.id!r}): the child ended "
                    f"{result.status.value}: {_reason(result.error)}; later steps did not run"
                )
            value = result.output
        return value

    first, last = tasks[0], tasks[-1]
    return Task(
        engine,
        body,
        id=id,
        queue=first.queue,
        types=(first.input_codec.type, last.output_codec.type),
    )


def make_loop(
    engine: Engine,
    id: str,
    iteration_task: Task[Any, Any],
    max_iterations: int,
    sleep: float | timedelta,
) -> Task[Any, Any]:
    if not isinstance(iteration_task, Task):
        raise InvalidOptionError("iteration_task", "a Task returning LoopResult", iteration_task)
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, int)
        or max_iterations < 1
    ):
        raise InvalidOptionError("max_iterations", "an integer >= 1", max_iterations)
    pause = to_seconds(sleep, "sleep")

    async def body(ctx: RunContext, input: Any = None) -> LoopOutput[Any]:
        durable = ctx._durable  # pyright: ignore[reportPrivateUsage]
        for i in range(max_iterations):
            if i and pause:
                await ctx.sleep(pause)
            [result] = await _spawn(
                durable,
                [(iteration_task, input)],
                RunStatus.WAITING_FOR_CHILDREN,
                FinalizeFailedError,
                f"loop {id!r} could not start iteration {i} (task {iteration_task.id!r})",
            )
            if not result.ok:
                raise FinalizeFailedError(
                    f"loop {id!r} failed at iteration {i} (task {iteration_task.id!r}): the "
                    f"child ended {result.status.value}: {_reason(result.error)}"
                )
            step = _as_loop_result(result.output, iteration_task.id)
            if step.done:
                return LoopOutput(success=True, output=step.output, iterations=i + 1)
        return LoopOutput(success=False, output=None, iterations=max_iterations)

    in_type = iteration_task.input_codec.type if iteration_task.takes_input else Any
    return Task(
        engine,
        body,
        id=id,
        queue=iteration_task.queue,
        types=(in_type, LoopOutput[Any]),
    )


def _as_loop_result(value: Any, task_id: str) -> LoopResult[Any]:
    if isinstance(value, LoopResult):
        return value  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, dict) and "done" in value:
        data = typing.cast(dict[str, Any], value)
        return LoopResult(done=bool(data["done"]), output=data.get("output"))
    raise FinalizeFailedError(
        f"iteration task {task_id!r} returned {type(typing.cast(object, value)).__name__}; "
        "it must return "
        "LoopResult(done=..., output=...)"
    )


# --- sleeping tasks --------------------------------------------------------------------------


def sleeping_token_id(task_id: str, unique_id: str) -> str:
    """The wait token of a sleeping task's run: unique per (task, unique id)."""
    return f"sleep:{task_id}:{unique_id}"


def make_sleeping_task(
    engine: Engine, id: str, timeout: float | timedelta, queue: str, output_type: Any
) -> SleepingTask[Any]:
    seconds = to_seconds(timeout, "timeout")
    if seconds <= 0:
        raise InvalidOptionError("timeout", "a duration > 0", timeout)

    async def body(ctx: RunContext, unique_id: str) -> Any:
        # Position 0 is the token recorded with the run. A run created without it (triggered
        # by task id from a process that lacks this definition) records it now, same id.
        durable = ctx._durable  # pyright: ignore[reportPrivateUsage]
        token = await durable.create_token(seconds, sleeping_token_id(id, unique_id))
        try:
            return await ctx.wait_for_token(token, output_type)
        except TokenTimeoutError:
            raise TaskTimeoutError(
                f"sleeping task {id!r} ({unique_id!r}) was not woken within {seconds:g}s"
            ) from None

    task: SleepingTask[Any] = SleepingTask(
        engine, body, id=id, queue=queue, types=(str, output_type)
    )
    task.sleep_timeout = seconds
    return task


class SleepingTask(Task[str, Out]):
    """A task whose run waits, holding no slot, until `engine.wakeup(task, unique_id, ...)`
    or its timeout. Its input is the unique id."""

    sleep_timeout: float = 0.0

    def initial_steps(self, run_id: str, input: Any, now: float) -> list[StepRecord]:
        """The wake-up token a new run starts with, stored with the run (also when it is a
        child of a parent), so `engine.wakeup` finds it before the run first executes."""
        return [sleeping_token_step(run_id, self.id, str(input), now + self.sleep_timeout)]


def sleeping_token_step(run_id: str, task_id: str, unique_id: str, wake_at: float) -> StepRecord:
    """The token record a sleeping run is created with, so it can be woken before it starts."""
    return StepRecord(
        run_id=run_id,
        position=0,
        kind="token",
        name="token",
        status=STEP_PENDING,
        wake_at=wake_at,
        token_id=sleeping_token_id(task_id, unique_id),
        batch=0,
    )


# --- helpers ---------------------------------------------------------------------------------


async def _spawn(
    durable: Durable,
    specs: Sequence[tuple[Task[Any, Any], Any]],
    status: RunStatus,
    error: type[NonRetryableError],
    what: str,
) -> list[RunResult[Any]]:
    """Start child runs and wait for them; an input the child refuses (type, size) fails the
    run without retry, since it would be refused again on every retry."""
    try:
        # A tree node makes no other durable call while it waits: suspend with the children.
        return await durable.spawn_and_wait(specs, _NO_OPTIONS, status, suspend_now=True)
    except InputValidationError as exc:
        raise error(f"{what}: {exc}") from exc


def _parent_output_codec(fn: Callable[..., Any]) -> Codec[Any]:
    """Rehydrates the recorded `Parent.output` into `T` of a `-> Parent[T]` annotation."""
    declared = _declared_return(fn)
    if typing.get_origin(declared) is Parent:
        args = typing.get_args(declared)
        if args:
            return codec_for(args[0])
    return codec_for(Any)


def _child_result(result: RunResult[Any], task_id: str) -> ChildResult:
    return ChildResult(
        status=result.status,
        output=result.output,
        error=result.error,
        run_id=result.run_id,
        task_id=task_id,
    )


def _reason(error: ErrorInfo | None) -> str:
    return "no error recorded" if error is None else f"{error.type}: {error.message}"


def _declared_return(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:  # unresolvable annotations: untyped output
        return Any


def _compatible(produced: Any, expected: Any) -> bool:
    if produced is Any or expected is Any or produced == expected:
        return True
    if isinstance(produced, type) and isinstance(expected, type):
        return issubclass(produced, expected)
    return False


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)
