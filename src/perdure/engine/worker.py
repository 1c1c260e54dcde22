"""The worker: claims due runs, executes attempts, commits their outcomes.

- Dispatch never awaits execution: each attempt is its own asyncio task, bounded by
  `concurrency` slots.
- Outcomes are committed in groups (one transaction for all attempts that finished meanwhile),
  each fenced on (run, attempt, lease owner).
- A heartbeat thread renews leases; a maintenance loop recovers expired leases and TTLs.
- All of them report to one circuit breaker (`breaker.py`): while the database is
  unreachable they back off together and log one line, and finished attempts' outcomes are
  retried until they commit or the fence rejects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from perdure.core.errors import (
    ErrorInfo,
    FinalizeFailedError,
    InputValidationError,
    NonRetryableError,
    OutputValidationError,
    PerdureError,
    RunCancelledError,
    StorageError,
    TaskTimeoutError,
)
from perdure.core.ids import worker_id as new_worker_id
from perdure.core.models import Outcome, Run
from perdure.core.serialization import (
    SerializationErrors,
    describe_type,
    format_validation_error,
)
from perdure.core.statuses import RunStatus
from perdure.engine.breaker import CircuitBreaker
from perdure.engine.config import EngineOptions
from perdure.engine.context import RunContext
from perdure.engine.durable import LeaseLost, Suspend, current_context
from perdure.engine.heartbeat import Heartbeat
from perdure.engine.maintenance import Sweeper
from perdure.storage import Storage
from perdure.storage.database import ConflictError
from perdure.storage.steps import Fence

if TYPE_CHECKING:
    from perdure.engine.engine import Engine
    from perdure.engine.task import Task

log = logging.getLogger("perdure.worker")

T = TypeVar("T")

CLAIM_BATCH = 64
STOP_CANCELLED = "cancelled"
STOP_LEASE_LOST = "lease_lost"
STOP_SHUTDOWN = "shutdown"


@dataclass(eq=False)
class Attempt:
    run: Run
    task: Task[Any, Any]
    ctx: RunContext
    aio_task: asyncio.Task[None] | None = None
    stop_reason: str | None = None
    finishing: bool = False
    started: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, int]:
        return (self.run.id, self.run.attempt)

    def stop(self, reason: str) -> None:
        if self.finishing or self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.ctx.cancelled.set()
        # A task cancelled before its first step never runs its cleanup: leave an unstarted
        # attempt alone; it sees `stop_reason` as it starts and goes straight to cleanup.
        if self.aio_task is not None and self.started:
            self.aio_task.cancel()


class Worker:
    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        options: EngineOptions,
        tasks: dict[str, Task[Any, Any]],
    ) -> None:
        self.engine = engine
        self.storage = storage
        self.options = options
        self.clock = options.clock
        self.tasks = tasks
        self.id = new_worker_id()
        self.queues = sorted(options.queues or {t.queue for t in tasks.values()})
        self.active: dict[str, Attempt] = {}
        self._leases: dict[str, int] = {}
        self._leases_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._pending: list[tuple[Outcome, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Below this many free slots, wait for finishing attempts before claiming again.
        self._batch_floor = min(options.concurrency, CLAIM_BATCH) // 2
        self._pool_size = min(options.concurrency, 64)
        self._threads = ThreadPoolExecutor(
            max_workers=self._pool_size, thread_name_prefix="perdure-task"
        )
        self._busy_threads = 0  # `def` bodies running, abandoned ones (timed out...) included
        self._busy_lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._breaker = CircuitBreaker(log_extra={"worker_id": self.id})
        self._stop_deadline: float | None = None  # monotonic; set by stop()
        self._heartbeat = Heartbeat(
            storage=storage,
            worker_id=self.id,
            lease=options.lease,
            interval=options.heartbeat,
            check_interval=min(options.poll_interval, options.heartbeat),
            clock=self.clock,
            snapshot=self._lease_snapshot,
            claims=lambda: (self.claims_sent, self.claims_done),
            on_lost=self._report_lost,
            breaker=self._breaker,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._next_wake: float | None = None
        self._sweeper = Sweeper(
            storage=storage,
            options=options,
            breaker=self._breaker,
            finished=engine._attempt_finished,  # pyright: ignore[reportPrivateUsage]
            failed=lambda exc: self._storage_failed("maintenance", exc),
            stopping=lambda: self._stopping,
            worker_id=self.id,
        )
        #: Claims sent and claims whose runs were started (or that failed): written on the
        #: loop, read by the heartbeat thread, which must not take a claim's runs for strays.
        self.claims_sent = 0
        self.claims_done = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.storage.register_tasks(
            [t.info() for t in self.tasks.values()], self.clock.time()
        )
        self._heartbeat.start()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="perdure-claim"),
            asyncio.create_task(self._sweeper.loop(), name="perdure-maintenance"),
        ]
        log.info(
            "worker %s started: queues=%s concurrency=%d tasks=%d",
            self.id,
            ",".join(self.queues),
            self.options.concurrency,
            len(self.tasks),
            extra={"worker_id": self.id},
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; give running attempts `grace` seconds; release the rest."""
        grace = self.options.shutdown_grace if grace is None else grace
        self._stopping = True
        self._stop_deadline = time.monotonic() + grace
        self._wake.set()
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for attempt in list(self.active.values()):
            attempt.ctx.shutdown.set()
        if self.active:
            waits = [a.done.wait() for a in self.active.values()]
            try:
                async with asyncio.timeout(grace):
                    await asyncio.gather(*waits)
            except TimeoutError:
                pass
        for attempt in [a for a in self.active.values() if not a.finishing]:
            attempt.stop(STOP_SHUTDOWN)
        # Every attempt, the finishing ones too: a suspension or outcome still being written
        # must land (or give up at the deadline, see `_retrying`) before the storage closes.
        await asyncio.gather(*(a.done.wait() for a in list(self.active.values())))
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        await self._heartbeat.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped", self.id, extra={"worker_id": self.id})

    def wake(self) -> None:
        self._wake.set()

    def wake_at(self, when: float) -> None:
        """Claim again when a delayed run or retry becomes due (this process only). One timer
        is kept, for the earliest due time; a later one is found by that claim's next poll."""
        if self._next_wake is not None and self._next_wake <= when and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._next_wake = when
        self._timer = self._loop.call_later(max(0.0, when - self.clock.time()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._next_wake = None
        self._wake.set()

    def cancel_local(self, run_id: str) -> None:
        attempt = self.active.get(run_id)
        if attempt is not None:
            attempt.stop(STOP_CANCELLED)

    def check_leases(self) -> None:
        """Stop, now, the attempts no longer leased to this worker (the heartbeat's check)."""
        self._heartbeat.check_now()

    # --- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        task_ids = sorted(self.tasks)
        while not self._stopping:
            free = self.options.concurrency - len(self.active)
            if free <= 0 or (free < self._batch_floor and self._finishing_soon()):
                # Attempts whose outcomes are being committed free their slots together in a
                # moment: claim once for all of them rather than once per freed slot.
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            limit = min(free, CLAIM_BATCH)
            await self._breaker.wait()  # the database is unreachable: pause claims
            # Clear before claiming: a notification that lands during the claim re-wakes us.
            self._wake.clear()
            self.claims_sent += 1
            claim = self._loop.create_task(
                self.storage.claim_runs(
                    self.id, self.queues, task_ids, limit, self.options.lease, self.clock.time()
                )
            )
            try:
                # Shielded: stop() cancels this loop, and a claim cancelled while its answer
                # is on the way may have committed, leaving its runs leased here unseen.
                runs = await asyncio.shield(claim)
                self._breaker.record_success()
                for run in runs:
                    self._start_attempt(run)
            except asyncio.CancelledError:
                await self._hand_back(claim)
                raise
            except Exception as exc:  # the loop must outlive any failure
                self._storage_failed("claim", exc)
                continue
            finally:
                self.claims_done += 1  # after its runs entered `_leases` (see Heartbeat)
            if len(runs) < limit:
                try:
                    async with asyncio.timeout(self.options.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _hand_back(self, claim: asyncio.Task[list[Run]]) -> None:
        """Release, at shutdown, the runs of a claim whose answer came after the stop: they
        never started here, so they go back to the queue now instead of when their lease
        expires (which would also count them as lost)."""
        try:
            runs = await claim
        except Exception:  # nothing claimed, or unknown: the lease expiry covers the latter
            return
        if not runs:
            return
        try:
            await self._retrying(
                lambda: self.storage.release_runs(
                    self.id, [(run.id, run.attempt) for run in runs], self.clock.time()
                )
            )
        except PerdureError as exc:
            log.error(
                "could not release %d runs claimed as the worker stopped: %s; their leases "
                "will expire and they will be run again",
                len(runs),
                exc,
                extra={"worker_id": self.id},
            )

    def _finishing_soon(self) -> bool:
        """Whether an attempt's outcome is being committed (its slot frees when it lands)."""
        return any(a.finishing for a in self.active.values())

    def _start_attempt(self, run: Run) -> None:
        task = self.tasks[run.task_id]
        ctx = RunContext(self.engine, run, self.id)
        attempt = Attempt(run=run, task=task, ctx=ctx)
        previous = self.active.get(run.id)
        if previous is not None:
            # An older attempt of this run still runs here: its lease expired and the run was
            # recovered and claimed again (by us). Stop it, or it would run on unobserved.
            previous.stop(STOP_LEASE_LOST)
        self.active[run.id] = attempt
        with self._leases_lock:
            self._leases[run.id] = run.attempt
        # The loop's own create_task: asyncio.create_task looks the running loop up each time.
        attempt.aio_task = self._loop.create_task(
            self._run_attempt(attempt), name=f"perdure-run-{run.id}"
        )

    # --- executing ---------------------------------------------------------------------------

    async def _run_attempt(self, attempt: Attempt) -> None:
        run = attempt.run
        outcome: Outcome | None = None
        suspend: Suspend | None = None
        current_context.set(attempt.ctx)  # this asyncio task's own context
        attempt.started = True
        try:
            if attempt.stop_reason is None:
                outcome = await self._execute(attempt)
        except asyncio.CancelledError as exc:
            this = asyncio.current_task()
            if attempt.stop_reason is None and this is not None and this.cancelling() == 0:
                # Raised by the task's own code (it awaited something that was cancelled),
                # not a stop by the engine: an ordinary failure, not a lost worker.
                outcome = self._failure(run, exc)
            else:
                outcome = None
        except Suspend as exc:
            # Without its traceback: kept past this clause, it would hold this very frame
            # (a cycle for the garbage collector) and every frame of the body.
            suspend = exc.with_traceback(None)
            # Already suspended in the transaction that created its children: no write of
            # this attempt may follow, and a lease check must not report it lost.
            if exc.committed:
                attempt.finishing = True
        except LeaseLost:
            attempt.stop_reason = attempt.stop_reason or STOP_LEASE_LOST
        except BaseException as exc:  # never let one attempt kill the worker
            log.exception("internal error running %s", run.id, extra=_extra(run, self.id))
            outcome = Outcome(
                run.id,
                run.attempt,
                RunStatus.FAILED,
                error=ErrorInfo.from_exception(exc, retryable=False),
            )
        try:
            await self._conclude(attempt, outcome, suspend)
        except asyncio.CancelledError:
            pass
        except Exception:  # never skip the cleanup below: the slot and the lease go with it
            log.exception("internal error ending %s", run.id, extra=_extra(run, self.id))
        finally:
            # A newer attempt of the same run may have replaced this one: leave its entries.
            if self.active.get(run.id) is attempt:
                del self.active[run.id]
            with self._leases_lock:
                if self._leases.get(run.id) == run.attempt:
                    del self._leases[run.id]
            attempt.done.set()
            self._slot_freed.set()
            self._wake.set()
            self.engine._attempt_finished(run.id)  # pyright: ignore[reportPrivateUsage]

    async def _conclude(
        self, attempt: Attempt, outcome: Outcome | None, suspend: Suspend | None
    ) -> None:
        """The writes that end an attempt whose body is over: buffered events, then its
        suspension, outcome or release. Each is fenced, and bounded at shutdown by `_retrying`."""
        run = attempt.run
        waits = suspend is not None and not suspend.committed
        if attempt.stop_reason is None and (outcome is not None or waits):
            # From here on a stop must not cut these writes short (`Attempt.stop`).
            attempt.finishing = True
            try:
                await attempt.ctx._flush_events()  # pyright: ignore[reportPrivateUsage]
            except Exception as exc:  # the outcome must still be recorded
                log.warning(
                    "could not record progress/metadata of %s: %s",
                    run.id,
                    exc,
                    extra=_extra(run, self.id),
                )
        if suspend is not None and not suspend.committed and attempt.stop_reason is None:
            try:
                suspended = await self._retrying(
                    lambda: self.storage.suspend(
                        Fence(run.id, run.attempt, self.id),
                        suspend.wait_positions,
                        suspend.wake_at,
                        self.clock.time(),
                        suspend.status,
                    )
                )
                if suspended and suspend.wake_at is not None:
                    self.wake_at(suspend.wake_at)
                if not suspended:
                    log.warning(
                        "run %s attempt %d could not suspend: lease lost",
                        run.id,
                        run.attempt,
                        extra=_extra(run, self.id),
                    )
            except PerdureError as exc:
                log.error(
                    "could not suspend %s: %s; the lease will expire and the run will be resumed",
                    run.id,
                    exc,
                    extra=_extra(run, self.id),
                )
        try:
            if attempt.stop_reason in (STOP_CANCELLED, STOP_LEASE_LOST):
                outcome = None  # someone else owns the run now; our result must not land
            if outcome is not None:
                attempt.finishing = True
                if run.parent_id != outcome.parent_id:  # its commit settles the parent's wait
                    outcome = dataclasses.replace(outcome, parent_id=run.parent_id)
                applied = await self._submit(outcome)
                if not applied:
                    log.warning(
                        "stale write rejected: run %s attempt %d is no longer leased to "
                        "worker %s; its outcome (%s) was discarded",
                        run.id,
                        run.attempt,
                        self.id,
                        outcome.status.value,
                        extra=_extra(run, self.id),
                    )
            elif attempt.stop_reason == STOP_SHUTDOWN:
                await self._retrying(
                    lambda: self.storage.release_runs(self.id, [attempt.key], self.clock.time())
                )
        except PerdureError as exc:
            log.error(
                "could not record the outcome of %s attempt %d: %s; the lease will "
                "expire and the run will be re-run",
                run.id,
                run.attempt,
                exc,
                extra=_extra(run, self.id),
            )

    async def _execute(self, attempt: Attempt) -> Outcome:
        run, task, ctx = attempt.run, attempt.task, attempt.ctx
        try:
            args: tuple[Any, ...] = (ctx,)
            if task.takes_input:
                args = (ctx, task.input_codec.load(run.input))
        except ValidationError as exc:
            text, _ = format_validation_error(exc)
            error = InputValidationError(
                f"stored input of run {run.id} does not match task {task.id!r}'s input type "
                f"{describe_type(task.input_codec.type)}: {text}",
                task_id=task.id,
            )
            return self._failure(run, error, retryable=False)
        timeout = run.timeout
        # No timeout, no scope: asyncio.timeout(None) still costs a context manager per run.
        scope = asyncio.timeout(timeout) if timeout is not None else None
        try:
            async with scope or _UNLIMITED:
                if task.is_async:
                    result = await task.fn(*args)
                else:
                    # The thread runs in a copy of this context, so ctx-less helpers
                    # (trigger_and_wait_sync) find the current run.
                    call = functools.partial(contextvars.copy_context().run, task.fn, *args)
                    result = await self._run_in_thread(call)
        except TimeoutError as exc:
            if not _expired(scope):
                return self._failure(run, exc)
            return self._timed_out(attempt)
        except FinalizeFailedError as exc:
            return Outcome(
                run.id,
                run.attempt,
                RunStatus.FINALIZE_FAILED,
                error=ErrorInfo.from_exception(exc, retryable=False),
            )
        except TaskTimeoutError as exc:  # a sleeping task's timeout, raised by its body
            return Outcome(
                run.id,
                run.attempt,
                RunStatus.TIMED_OUT,
                error=ErrorInfo.from_exception(exc, retryable=False),
            )
        except RunCancelledError as exc:
            return Outcome(
                run.id,
                run.attempt,
                RunStatus.CANCELLED,
                error=ErrorInfo.from_exception(exc, retryable=False),
            )
        except Exception as exc:
            if _expired(scope):  # the body turned the cancellation at its deadline into this
                return self._timed_out(attempt)
            return self._failure(run, exc)
        if _expired(scope):  # the body swallowed the cancellation at its deadline
            return self._timed_out(attempt)
        try:
            output_json = task.output_codec.dump_json(result)
        except SerializationErrors as exc:
            error = OutputValidationError(
                f"task {task.id!r} returned {type(result).__name__}, which does not serialize "
                f"as its declared output type {describe_type(task.output_codec.type)}: {exc}"
            )
            return self._failure(run, error, retryable=False)
        size = len(output_json.encode())
        if size > self.options.max_payload_bytes:
            error = OutputValidationError(
                f"output of run {run.id} of task {task.id!r} is {size} bytes serialized; the "
                f"limit is {self.options.max_payload_bytes} bytes (engine option "
                "max_payload_bytes)"
            )
            return self._failure(run, error, retryable=False)
        return Outcome(
            run.id,
            run.attempt,
            RunStatus.COMPLETED,
            output_json=output_json,
            parent_id=run.parent_id,
        )

    def _timed_out(self, attempt: Attempt) -> Outcome:
        run = attempt.run
        attempt.ctx.cancelled.set()  # a sync body keeps running in its thread: ask it to stop
        error = TaskTimeoutError(
            f"run {run.id} of task {attempt.task.id!r} exceeded its timeout of "
            f"{run.timeout:g}s (attempt {run.attempt})"
        )
        return Outcome(
            run.id,
            run.attempt,
            RunStatus.TIMED_OUT,
            error=ErrorInfo.from_exception(error, retryable=False),
        )

    def _run_in_thread(self, call: Callable[[], Any]) -> asyncio.Future[Any]:
        """Start a `def` body on a thread that is free now. A body abandoned at its timeout (or
        at cancel/shutdown) keeps its thread until it returns; when the pool's threads are all
        taken, the body gets a thread of its own instead of queueing behind them while its
        timeout runs."""
        loop = self._loop
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if future.done():  # timed out or cancelled meanwhile: the result is ignored
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        def body() -> None:
            result, error = None, None
            try:
                result = call()
            except BaseException as exc:
                error = exc
            finally:
                with self._busy_lock:
                    self._busy_threads -= 1
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(settle, result, error)

        with self._busy_lock:
            self._busy_threads += 1
            pooled = self._busy_threads <= self._pool_size
        if pooled:
            self._threads.submit(body)
        else:
            threading.Thread(target=body, name="perdure-task-extra", daemon=True).start()
        return future

    def _failure(self, run: Run, exc: BaseException, *, retryable: bool | None = None) -> Outcome:
        if retryable is None:
            retryable = not isinstance(exc, NonRetryableError)
        error = ErrorInfo.from_exception(exc, retryable=retryable)
        # Only failures use up max_attempts: lost leases (crashes) are capped separately by
        # max_lost_leases, and resumes after a durable wait are not failures.
        failures = run.failures + 1
        if retryable and failures < run.max_attempts:
            task = self.tasks[run.task_id]
            retry_at = self.clock.time() + task.retry.delay(failures)
            self.wake_at(retry_at)
            log.info(
                "run %s attempt %d failed (%s), retrying at +%.2fs",
                run.id,
                run.attempt,
                error.type,
                retry_at - self.clock.time(),
                extra=_extra(run, self.id),
            )
            return Outcome(run.id, run.attempt, RunStatus.RETRYING, error=error, retry_at=retry_at)
        log.info(
            "run %s failed on attempt %d: %s: %s",
            run.id,
            run.attempt,
            error.type,
            error.message,
            extra=_extra(run, self.id),
        )
        return Outcome(run.id, run.attempt, RunStatus.FAILED, error=error)

    # --- committing outcomes (group commit) --------------------------------------------------

    async def _submit(self, outcome: Outcome) -> bool:
        future: asyncio.Future[bool] = self._loop.create_future()
        self._pending.append((outcome, future))
        if self._flusher is None or self._flusher.done():
            # A context of its own, not the submitting attempt's (see groups.SpawnCommits).
            self._flusher = self._loop.create_task(self._flush(), context=contextvars.Context())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._commit_outcomes([o for o, _ in batch])
            except Exception as exc:
                if not isinstance(exc, PerdureError):
                    log.exception(
                        "committing %d outcomes failed", len(batch), extra={"worker_id": self.id}
                    )
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), applied in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(applied)

    async def _commit_outcomes(self, outcomes: list[Outcome]) -> list[bool]:
        async def commit() -> list[bool]:
            return await self.storage.finish_attempts(self.id, outcomes, self.clock.time())

        results = await self._retrying(commit)
        if all(results):
            return results
        stale = [o for o, ok in zip(outcomes, results, strict=True) if not ok]
        landed = await self._landed(stale)
        return [
            ok or (o.run_id, o.attempt) in landed for o, ok in zip(outcomes, results, strict=True)
        ]

    async def _landed(self, outcomes: list[Outcome]) -> set[tuple[str, int]]:
        """Those of the outcomes reported stale that had in fact been committed: by an earlier
        try whose COMMIT reached the server but whose reply was lost with the connection, or
        by a first sending that PostgreSQL's driver replayed on another connection."""
        try:
            found = await self.storage.get_runs([o.run_id for o in outcomes])
        except PerdureError:
            return set()
        runs = {run.id: run for run in found}
        return {
            (outcome.run_id, outcome.attempt)
            for outcome in outcomes
            if (run := runs.get(outcome.run_id)) is not None
            and run.attempt == outcome.attempt
            and run.status is outcome.status
            and run.lease_owner is None
        }

    # --- riding out storage failures ---------------------------------------------------------

    def _storage_failed(self, what: str, exc: Exception) -> float:
        """Report a failed storage call to the breaker (which logs the outage once); returns
        how long to wait before trying again. Anything but a PerdureError is a bug: logged."""
        if not isinstance(exc, PerdureError):
            log.exception("%s failed unexpectedly", what, extra={"worker_id": self.id})
        return self._breaker.record_failure(exc)

    async def durable_write(self, op: Callable[[], Awaitable[T]]) -> T:
        """A running attempt's durable write (a step record, a spawn) rides out a database
        outage as its outcome does (`_retrying`) instead of failing the attempt. Safe to try
        again: the write is fenced, and a try that landed unseen is recognised (a record's
        taken position is checked against the attempt's own records; a spawn that landed
        fails its fence, and the attempt stops as its suspended run's). A conflict (a taken
        id) is the write's own answer: raised at once."""
        return await self._retrying(op, outage_only=True)

    async def _retrying(self, op: Callable[[], Awaitable[T]], *, outage_only: bool = False) -> T:
        """Run a storage write of a running attempt until it commits. While the database is
        unreachable it waits for it (the write is fenced: once it lands, a lease lost
        meanwhile makes it a no-op). It gives up, raising the last error, when the database
        answers but the write keeps failing for longer than a lease (it cannot succeed), or
        when the worker is stopping and its grace period is over. `outage_only`: any error
        but a `StorageError` other than a conflict is raised at once."""
        started = time.monotonic()
        while True:
            if not self._stopping:
                await self._breaker.wait()
            try:
                result = await op()
            except PerdureError as exc:
                if outage_only and (
                    not isinstance(exc, StorageError) or isinstance(exc, ConflictError)
                ):
                    raise
                delay = self._breaker.record_failure(exc)
                now = time.monotonic()
                reachable = self._breaker.last_success > started
                if (reachable and now - started > self.options.lease) or (
                    self._stop_deadline is not None and now + delay > self._stop_deadline
                ):
                    raise
                if self._stopping:
                    await asyncio.sleep(delay)
                continue  # the loop's top waits for the breaker
            self._breaker.record_success()
            return result

    # --- leases ------------------------------------------------------------------------------

    def _lease_snapshot(self) -> list[tuple[str, int]]:
        with self._leases_lock:
            return list(self._leases.items())

    def _report_lost(self, lost: list[tuple[str, int]]) -> None:
        """Called from the heartbeat thread."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_lost, lost)

    def _on_lost(self, lost: list[tuple[str, int]]) -> None:
        for run_id, attempt_no in lost:
            attempt = self.active.get(run_id)
            if attempt is None or attempt.run.attempt != attempt_no or attempt.finishing:
                continue
            if attempt.ctx._durable.suspending:  # pyright: ignore[reportPrivateUsage]
                # Suspended by its own commit (the run waits now): not lost. Had the lease
                # been lost first, that commit's fence fails and the body stops by itself.
                continue
            log.warning(
                "run %s attempt %d is no longer leased to this worker (cancelled or "
                "recovered elsewhere); stopping it",
                run_id,
                attempt_no,
                extra=_extra(attempt.run, self.id),
            )
            attempt.stop(STOP_LEASE_LOST)

    async def run_maintenance(self, *, recover_leases: bool = True) -> None:
        await self._sweeper.run(recover_leases=recover_leases)


_UNLIMITED = contextlib.nullcontext()


def _expired(scope: asyncio.Timeout | None) -> bool:
    return scope is not None and scope.expired()


def _extra(run: Run, worker: str) -> dict[str, Any]:
    return {"run_id": run.id, "task_id": run.task_id, "attempt": run.attempt, "worker_id": worker}
