"""Task definitions: `Task[In, Out]`, created by `@engine.task(...)`.

The declared parameter and return annotations are the schema: input is validated at trigger
time (nothing is stored on error) and rehydrated into the declared type in the worker.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import PydanticUserError

from perdure.core.errors import ConfigurationError, InvalidOptionError
from perdure.core.limits import Debounce
from perdure.core.models import RunResult, TaskInfo
from perdure.core.retry import RetryPolicy, to_seconds
from perdure.core.serialization import Codec, codec_for, describe_type
from perdure.engine.durable import context_or_error, current_context
from perdure.engine.handle import RunHandle
from perdure.engine.sync import run_sync

if TYPE_CHECKING:
    from perdure.engine.context import RunContext
    from perdure.engine.engine import Engine

In = TypeVar("In")
Out = TypeVar("Out")
T = TypeVar("T")
RateLimitMode = Literal["wait", "reject"]

_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}$")
DEFAULT_QUEUE = "default"
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class TriggerOptions:
    """Per-trigger options, validated before anything is stored."""

    idempotency_key: str | None = None
    idempotency_ttl: float | None = None
    delay: float | None = None
    run_at: float | None = None
    priority: int = 0
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    concurrency_key: str | None = None
    queue: str | None = None
    debounce: Debounce | None = None
    rate_limit: RateLimitMode = "wait"

    @classmethod
    def build(
        cls,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: float | timedelta | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ttl: float | timedelta | None = None,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        concurrency_key: str | None = None,
        queue: str | None = None,
        debounce: Debounce | None = None,
        rate_limit: RateLimitMode = "wait",
    ) -> TriggerOptions:
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise InvalidOptionError("idempotency_key", "a non-empty string", idempotency_key)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidOptionError("priority", "an integer", priority)
        if delay is not None and run_at is not None:
            raise InvalidOptionError("delay", "either delay= or run_at=, not both", delay)
        if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
            raise InvalidOptionError("run_at", "a timezone-aware datetime", run_at)
        tag_list = tuple(tags or ())
        if isinstance(tags, str) or any(not isinstance(t, str) for t in tag_list):
            raise InvalidOptionError("tags", "a list of strings", tags)
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidOptionError("metadata", "a dict of JSON values", metadata)
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise InvalidOptionError("queue", "a non-empty string", queue)
        if concurrency_key is not None and (
            not isinstance(concurrency_key, str) or not concurrency_key
        ):
            raise InvalidOptionError("concurrency_key", "a non-empty string", concurrency_key)
        if debounce is not None and not isinstance(debounce, Debounce):
            raise InvalidOptionError("debounce", "a Debounce(key, window)", debounce)
        if debounce is not None and (idempotency_key is not None or run_at is not None):
            raise InvalidOptionError(
                "debounce", "no idempotency_key or run_at alongside it", debounce
            )
        if rate_limit not in ("wait", "reject"):
            raise InvalidOptionError("rate_limit", "'wait' or 'reject'", rate_limit)
        ttl_s = None if ttl is None else to_seconds(ttl, "ttl")
        if ttl_s is not None and ttl_s <= 0:
            raise InvalidOptionError("ttl", "a duration > 0", ttl)
        return cls(
            idempotency_key=idempotency_key,
            idempotency_ttl=None
            if idempotency_ttl is None
            else to_seconds(idempotency_ttl, "idempotency_ttl"),
            delay=None if delay is None else to_seconds(delay, "delay"),
            run_at=None if run_at is None else run_at.timestamp(),
            priority=priority,
            ttl=ttl_s,
            tags=tag_list,
            metadata=metadata,
            concurrency_key=concurrency_key,
            queue=queue,
            debounce=debounce,
            rate_limit=rate_limit,
        )


class Task(Generic[In, Out]):
    """A task definition. Call `trigger(input)` to start a run; the engine's workers run `fn`."""

    def __init__(
        self,
        engine: Engine,
        fn: Callable[..., Any],
        *,
        id: str,
        queue: str = DEFAULT_QUEUE,
        timeout: float | timedelta | None = None,
        retry: RetryPolicy | None = None,
        version: str | None = None,
        types: tuple[Any, Any] | None = None,
    ) -> None:
        if not isinstance(id, str) or not _TASK_ID.match(id):
            raise InvalidOptionError(
                "id", "1-200 letters, digits or _ . : / - starting with a letter or digit", id
            )
        if not isinstance(queue, str) or not queue:
            raise InvalidOptionError("queue", "a non-empty string", queue)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidOptionError("retry", "a RetryPolicy", retry)
        self.engine = engine
        self.fn = fn
        self.id = id
        self.queue = queue
        self.timeout = None if timeout is None else to_seconds(timeout, "timeout")
        if self.timeout is not None and self.timeout <= 0:
            raise InvalidOptionError("timeout", "a duration > 0", timeout)
        self.retry = retry or DEFAULT_RETRY
        self.version = version
        self.is_async = inspect.iscoroutinefunction(fn)
        in_type, out_type, self.takes_input = signature_types(fn, id)
        if types is not None:  # built-in kinds (parent, sequence, loop) declare their types
            in_type, out_type = types
        self.input_codec: Codec[In] = _codec(in_type, id, "input")
        self.output_codec: Codec[Out] = _codec(out_type, id, "output")

    def __repr__(self) -> str:
        return f"<Task {self.id!r} queue={self.queue!r}>"

    def info(self) -> TaskInfo:
        return TaskInfo(
            task_id=self.id,
            queue=self.queue,
            max_attempts=self.retry.max_attempts,
            timeout=self.timeout,
            version=self.version,
            input_schema=_schema(self.input_codec),
            output_schema=_schema(self.output_codec),
        )

    # --- triggering --------------------------------------------------------------------------

    async def trigger(
        self,
        input: In,
        *,
        idempotency_key: str | None = None,
        idempotency_ttl: float | timedelta | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ttl: float | timedelta | None = None,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        concurrency_key: str | None = None,
        queue: str | None = None,
        debounce: Debounce | None = None,
        rate_limit: RateLimitMode = "wait",
    ) -> RunHandle[Out]:
        """Validate `input`, store a run and return its handle once the row is committed."""
        options = TriggerOptions.build(
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            delay=delay,
            run_at=run_at,
            priority=priority,
            ttl=ttl,
            tags=tags,
            metadata=metadata,
            concurrency_key=concurrency_key,
            queue=queue,
            debounce=debounce,
            rate_limit=rate_limit,
        )
        handles = await self.engine._trigger_many(self, [input], options)  # pyright: ignore[reportPrivateUsage]
        return handles[0]

    async def batch_trigger(
        self,
        inputs: Sequence[In],
        *,
        priority: int = 0,
        delay: float | timedelta | None = None,
        ttl: float | timedelta | None = None,
        tags: Sequence[str] | None = None,
        queue: str | None = None,
        concurrency_key: str | None = None,
    ) -> list[RunHandle[Out]]:
        """Trigger one run per input in a single transaction: all are stored, or none."""
        options = TriggerOptions.build(
            priority=priority,
            delay=delay,
            ttl=ttl,
            tags=tags,
            queue=queue,
            concurrency_key=concurrency_key,
        )
        return await self.engine._trigger_many(self, list(inputs), options)  # pyright: ignore[reportPrivateUsage]

    async def trigger_and_wait(self, input: In, **options: Any) -> RunResult[Out]:
        """From inside a task body: start a child run and wait for it durably (the parent
        suspends, holding no slot). A replay never triggers the child twice."""
        ctx = context_or_error("trigger_and_wait")
        results = await ctx._durable.trigger_and_wait(  # pyright: ignore[reportPrivateUsage]
            self, [input], TriggerOptions.build(**options)
        )
        return results[0]

    async def batch_trigger_and_wait(
        self, inputs: Sequence[In], **options: Any
    ) -> list[RunResult[Out]]:
        """From inside a task body: start one child per input (one transaction) and wait for
        all of them; results come back in input order, failed ones included."""
        ctx = context_or_error("batch_trigger_and_wait")
        return await ctx._durable.trigger_and_wait(  # pyright: ignore[reportPrivateUsage]
            self, list(inputs), TriggerOptions.build(**options)
        )

    def trigger_and_wait_sync(self, input: In, **options: Any) -> RunResult[Out]:
        ctx = context_or_error("trigger_and_wait_sync")
        return run_sync(
            self.engine,
            "trigger_and_wait_sync",
            lambda: _with_context(ctx, self.trigger_and_wait(input, **options)),
        )

    def batch_trigger_and_wait_sync(
        self, inputs: Sequence[In], **options: Any
    ) -> list[RunResult[Out]]:
        ctx = context_or_error("batch_trigger_and_wait_sync")
        return run_sync(
            self.engine,
            "batch_trigger_and_wait_sync",
            lambda: _with_context(ctx, self.batch_trigger_and_wait(inputs, **options)),
        )

    def trigger_sync(self, input: In, **options: Any) -> RunHandle[Out]:
        return run_sync(self.engine, "trigger_sync", lambda: self.trigger(input, **options))

    def batch_trigger_sync(self, inputs: Sequence[In], **options: Any) -> list[RunHandle[Out]]:
        return run_sync(
            self.engine, "batch_trigger_sync", lambda: self.batch_trigger(inputs, **options)
        )

    def handle(self, run_id: str) -> RunHandle[Out]:
        """A typed handle for a run of this task."""
        return RunHandle(self.engine, run_id, self.output_codec)


async def _with_context(ctx: RunContext, awaitable: Awaitable[T]) -> T:
    token = current_context.set(ctx)
    try:
        return await awaitable
    finally:
        current_context.reset(token)


def signature_types(fn: Callable[..., Any], task_id: str) -> tuple[Any, Any, bool]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"task {task_id!r}: cannot read the signature: {exc}") from exc
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) not in (1, 2) or len(positional) != len(params):
        raise ConfigurationError(
            f"task {task_id!r}: the function must take (ctx) or (ctx, input); "
            f"got ({', '.join(p.name for p in params)})"
        )
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to untyped JSON
        hints = {}
    takes_input = len(positional) == 2
    in_type: Any = hints.get(positional[1].name, Any) if takes_input else type(None)
    out_type: Any = hints.get("return", Any)
    return in_type, out_type, takes_input


def _codec(tp: Any, task_id: str, what: str) -> Codec[Any]:
    # pydantic refuses some types outright (e.g. `typing.TypedDict` before Python 3.12, or
    # arbitrary classes): report it at definition, as a configuration error naming the task.
    try:
        return codec_for(tp)
    except PydanticUserError as exc:
        raise ConfigurationError(
            f"task {task_id!r}: its {what} type {describe_type(tp)} cannot be serialized as "
            f"JSON: {exc.message}"
        ) from exc


def _schema(codec: Codec[Any]) -> dict[str, Any] | None:
    try:
        return codec.adapter.json_schema()
    except Exception:  # some types have no JSON schema; the catalog just omits it
        return None
