"""Engine operations on queues and dead letters (mixed into `Engine`): declare queue limits
in code, change them at run time, pause and resume, list depths, and handle dead letters."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from perdure.core.errors import InvalidOptionError
from perdure.core.limits import QueueLimits, RateLimit
from perdure.core.models import RunPage
from perdure.core.statuses import RunStatus
from perdure.engine.sync import run_sync

if TYPE_CHECKING:
    from perdure.core.clock import Clock
    from perdure.engine.engine import Engine
    from perdure.storage import Storage

#: `set_queue_limits(name, concurrency=UNLIMITED)` removes a limit.
UNLIMITED = 0


def _is_unlimited(value: Any) -> bool:
    return type(value) is int and value == UNLIMITED


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as `perdure queues ls` shows it: its limits and what is in it now."""

    limits: QueueLimits
    waiting: int
    running: int
    suspended: int

    @property
    def name(self) -> str:
        return self.limits.name


class QueueOps:
    clock: Clock
    _declared_queues: dict[str, QueueLimits]

    async def _ensure_open(self) -> Storage: ...  # provided by Engine

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        key_rate_limit: RateLimit | None = None,
        max_depth: int | None = None,
    ) -> QueueLimits:
        """Declare a queue's limits in code; they are stored when the engine connects (a later
        `perdure queues set-limit` changes them until the next deploy re-declares them)."""
        limits = QueueLimits(
            name=name,
            concurrency=concurrency,
            key_concurrency=key_concurrency,
            rate_limit=rate_limit,
            key_rate_limit=key_rate_limit,
            max_depth=max_depth,
        )
        self._declared_queues[name] = limits
        return limits

    async def set_queue_limits(self, name: str, **limits: Any) -> QueueLimits:
        """Change some limits of a queue at run time (0 removes a limit); others stay."""
        allowed = {"concurrency", "key_concurrency", "rate_limit", "key_rate_limit", "max_depth"}
        unknown = sorted(set(limits) - allowed)
        if unknown:
            raise InvalidOptionError(unknown[0], f"one of {', '.join(sorted(allowed))}", limits)
        changes = {k: (None if _is_unlimited(v) else v) for k, v in limits.items()}
        replace(QueueLimits(name), **changes)  # invalid values fail before connecting
        storage = await self._ensure_open()
        return await storage.update_queue_limits(name, changes, self.clock.time())

    async def pause_queue(self, name: str) -> None:
        """Workers stop claiming from the queue (running attempts finish); triggers still land."""
        storage = await self._ensure_open()
        await storage.set_queue_paused(name, True, self.clock.time())

    async def resume_queue(self, name: str) -> None:
        storage = await self._ensure_open()
        await storage.set_queue_paused(name, False, self.clock.time())

    async def queues(self) -> list[QueueInfo]:
        """Every queue that has limits or unfinished runs, with its depth and running count."""
        storage = await self._ensure_open()
        settings = {q.name: q for q in await storage.list_queues()}
        stats = await storage.queue_stats()
        names = sorted(set(settings) | set(stats))
        waiting_statuses = (RunStatus.DELAYED, RunStatus.QUEUED, RunStatus.RETRYING)
        waits = (
            RunStatus.SUSPENDED,
            RunStatus.WAITING_FOR_CHILDREN,
            RunStatus.WAITING_FOR_FINALIZE,
        )
        result: list[QueueInfo] = []
        for name in names:
            counts = stats.get(name, {})
            result.append(
                QueueInfo(
                    limits=settings.get(name, QueueLimits(name)),
                    waiting=sum(counts.get(s.value, 0) for s in waiting_statuses),
                    running=counts.get(RunStatus.RUNNING.value, 0),
                    suspended=sum(counts.get(s.value, 0) for s in waits),
                )
            )
        return result

    # --- dead letters ------------------------------------------------------------------------

    async def dead_letters(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> RunPage:
        """Runs that ended `failed`: retries exhausted, a non-retryable error, or the
        worker-lost cap. Newest first; `engine.replay(run_id)` re-runs one."""
        list_runs: Any = getattr(self, "list_runs")  # noqa: B009 - provided by Engine
        page: RunPage = await list_runs(
            status=RunStatus.FAILED.value, queue=queue, task_id=task, limit=limit, cursor=cursor
        )
        return page

    async def purge_dead_letters(
        self,
        *,
        queue: str | None = None,
        task: str | None = None,
        run_ids: list[str] | None = None,
        limit: int = 10_000,
    ) -> int:
        """Delete failed runs (with their history) — given ids, or all matching the filters;
        returns how many were deleted."""
        storage = await self._ensure_open()
        if run_ids is None:
            run_ids = await storage.select_dead_letters(queue=queue, task_id=task, limit=limit)
        else:
            runs = await storage.get_runs(run_ids)
            run_ids = [r.id for r in runs if r.status is RunStatus.FAILED]
        return await storage.purge_runs(run_ids)

    def _engine(self) -> Engine:
        return cast("Engine", self)

    def set_queue_limits_sync(self, name: str, **limits: Any) -> QueueLimits:
        return run_sync(
            self._engine(), "set_queue_limits_sync", lambda: self.set_queue_limits(name, **limits)
        )

    def pause_queue_sync(self, name: str) -> None:
        run_sync(self._engine(), "pause_queue_sync", lambda: self.pause_queue(name))

    def resume_queue_sync(self, name: str) -> None:
        run_sync(self._engine(), "resume_queue_sync", lambda: self.resume_queue(name))

    def queues_sync(self) -> list[QueueInfo]:
        return run_sync(self._engine(), "queues_sync", self.queues)

    def dead_letters_sync(self, **filters: Any) -> RunPage:
        return run_sync(self._engine(), "dead_letters_sync", lambda: self.dead_letters(**filters))

    def purge_dead_letters_sync(self, **filters: Any) -> int:
        return run_sync(
            self._engine(), "purge_dead_letters_sync", lambda: self.purge_dead_letters(**filters)
        )
