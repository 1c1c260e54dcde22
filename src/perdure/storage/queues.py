"""Queues and flow control (the `perdure_queues` aggregate): limits stored in the database and
enforced inside the claim and trigger transactions, so they hold across every worker.

Concurrency and rate limits of a queue are checked while its row is locked (PostgreSQL
`FOR UPDATE`; SQLite serializes writers anyway), so two claimers cannot both see the last free
slot. A run that waits (suspended, waiting for children) is not `running` and holds no slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from perdure.core.errors import BackpressureError, RateLimitedError
from perdure.core.limits import QueueLimits, RateLimit, claim_allowance
from perdure.core.models import NewRun, Run
from perdure.core.statuses import RunStatus, non_terminal, sources_of
from perdure.storage.database import CHANNEL_WORK, Database, Row, Tx
from perdure.storage.rows import row_to_run
from perdure.storage.writes import EventLog, run_insert_params

_NO_LIMIT = 2**31 - 1
#: Rate-limit starts are kept this long (longer than any sensible window) before pruning.
RATE_HISTORY = 24 * 3600.0


def row_to_queue(row: Row) -> QueueLimits:
    def rate(limit: Any, period: Any) -> RateLimit | None:
        return None if limit is None else RateLimit(int(limit), float(period))

    return QueueLimits(
        name=row["name"],
        concurrency=row["concurrency"],
        key_concurrency=row["key_concurrency"],
        rate_limit=rate(row["rate_limit"], row["rate_period"]),
        key_rate_limit=rate(row["key_rate_limit"], row["key_rate_period"]),
        max_depth=row["max_depth"],
        paused=bool(row["paused"]),
    )


def _queue_params(q: QueueLimits, now: float) -> dict[str, Any]:
    return {
        "name": q.name,
        "concurrency": q.concurrency,
        "key_concurrency": q.key_concurrency,
        "rate_limit": None if q.rate_limit is None else q.rate_limit.limit,
        "rate_period": None if q.rate_limit is None else q.rate_limit.per,
        "key_rate_limit": None if q.key_rate_limit is None else q.key_rate_limit.limit,
        "key_rate_period": None if q.key_rate_limit is None else q.key_rate_limit.per,
        "max_depth": q.max_depth,
        "now": now,
    }


async def _live_duplicates(tx: Tx, runs: Sequence[NewRun], queue: str, now: float) -> int:
    """How many of `runs` on `queue` repeat a live idempotency key (they return that run)."""
    found = 0
    for run in runs:
        if run.queue != queue or run.idempotency_key is None:
            continue
        key = {"task_id": run.task_id, "idempotency_key": run.idempotency_key}
        row = await tx.fetchone("find_idempotent_run", key)
        expires = None if row is None else row["idempotency_expires_at"]
        if row is not None and (expires is None or expires > now):
            found += 1
    return found


class QueueStore:
    """Mixed into `Storage`: queue settings, limited claims, backpressure, debounce, DLQ."""

    db: Database

    # --- settings ----------------------------------------------------------------------------

    async def upsert_queues(self, queues: Sequence[QueueLimits], now: float) -> None:
        """Store queue limits (a paused queue stays paused)."""
        if not queues:
            return
        # Name order, as claims lock queue rows: two writers cannot deadlock (PostgreSQL).
        ordered = sorted(queues, key=lambda q: q.name)
        async with self.db.transaction() as tx:
            await tx.executemany("upsert_queue", [_queue_params(q, now) for q in ordered])
            tx.notify(CHANNEL_WORK)  # a raised limit may free slots at once

    async def update_queue_limits(
        self, name: str, changes: dict[str, Any], now: float
    ) -> QueueLimits:
        """Change some limits of one queue, keeping the others, in one transaction (the row
        is locked while it is read, so two concurrent changes of different limits both land)."""
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("lock_queues", {"names": [name]})
            current = row_to_queue(rows[0]) if rows else QueueLimits(name)
            updated = replace(current, **changes)
            await tx.execute("upsert_queue", _queue_params(updated, now))
            tx.notify(CHANNEL_WORK)
        return updated

    async def set_queue_paused(self, name: str, paused: bool, now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("set_queue_paused", {"name": name, "paused": int(paused), "now": now})
            if not paused:
                tx.notify(CHANNEL_WORK)

    async def list_queues(self) -> list[QueueLimits]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall("list_queues", {})
        return [row_to_queue(row) for row in rows]

    async def queue_stats(self) -> dict[str, dict[str, int]]:
        """Per queue, the number of unfinished runs in each status."""
        async with self.db.reader() as tx:
            rows = await tx.fetchall("queue_stats", {"statuses": list(non_terminal())})
        stats: dict[str, dict[str, int]] = {}
        for row in rows:
            stats.setdefault(row["queue"], {})[row["status"]] = int(row["n"])
        return stats

    # --- claiming ----------------------------------------------------------------------------

    async def queue_limits(self, tx: Tx, queues: Sequence[str]) -> dict[str, QueueLimits]:
        rows = await tx.fetchall("find_queues", {"names": list(queues)})
        return {row["name"]: row_to_queue(row) for row in rows}

    async def claim_limited(
        self,
        tx: Tx,
        worker_id: str,
        limits: QueueLimits,
        task_ids: Sequence[str],
        free: int,
        lease: float,
        now: float,
    ) -> list[Row]:
        """Claim from one limited queue, inside the claim transaction, under its row lock."""
        await tx.fetchall("lock_queues", {"names": [limits.name]})
        running = recent = 0
        if limits.concurrency is not None:
            row = await tx.fetchone("count_running_in_queue", {"queue": limits.name})
            running = int(row["n"]) if row else 0
        if limits.rate_limit is not None:
            since = now - limits.rate_limit.per
            row = await tx.fetchone("count_recent_starts", {"queue": limits.name, "since": since})
            recent = int(row["n"]) if row else 0
        allowance = claim_allowance(free, limits, running, recent)
        if allowance <= 0:
            return []
        key_rate = limits.key_rate_limit
        params: dict[str, Any] = {
            "queue": limits.name,
            "task_ids": list(task_ids),
            "now": now,
            "limit": allowance,
        }
        keyed = limits.key_concurrency is not None or key_rate is not None
        if not keyed:
            # No per-key limits: plain priority order, as in an unlimited queue.
            rows = await tx.fetchall("claim_candidates", params)
        else:
            rows = await tx.fetchall(
                "claim_candidates_keyed",
                {
                    **params,
                    "since": now - (key_rate.per if key_rate else 0.0),
                    "key_concurrency": limits.key_concurrency or _NO_LIMIT,
                    "key_rate": key_rate.limit if key_rate else _NO_LIMIT,
                },
            )
        if not rows:
            return []
        claimed = await tx.fetchall(
            "claim_ids",
            {
                "ids": [row["id"] for row in rows],
                "worker_id": worker_id,
                "lease": lease,
                "now": now,
                "from_statuses": sources_of(RunStatus.RUNNING),
            },
        )
        # Starts feed the rate windows and, per key, the turn order of claim_candidates_keyed.
        if limits.rate_limit is not None or keyed:
            await tx.executemany(
                "insert_rate_start",
                [
                    {"queue": limits.name, "concurrency_key": row["concurrency_key"], "at": now}
                    for row in claimed
                ],
            )
        return claimed

    async def prune_rate_starts(self, now: float) -> None:
        """Forget starts older than any queue's rate window (and at least RATE_HISTORY)."""
        periods = [
            rate.per
            for q in await self.list_queues()
            for rate in (q.rate_limit, q.key_rate_limit)
            if rate is not None
        ]
        keep = max([RATE_HISTORY, *periods])
        async with self.db.transaction() as tx:
            await tx.execute("prune_rate_starts", {"before": now - keep})

    # --- triggering --------------------------------------------------------------------------

    async def check_backpressure(self, tx: Tx, runs: Sequence[NewRun], now: float) -> None:
        """Inside the trigger transaction: reject (nothing stored) when a queue's depth cap
        would be passed. The queue row is locked first, so concurrent triggers count in turn.
        A trigger whose idempotency key is live adds no run, so it is never rejected."""
        wanted: dict[str, int] = {}
        for run in runs:
            wanted[run.queue] = wanted.get(run.queue, 0) + 1
        limits = await self.queue_limits(tx, list(wanted))
        capped = sorted(q for q, lim in limits.items() if lim.max_depth is not None)
        if not capped:
            return
        await tx.fetchall("lock_queues", {"names": capped})
        for queue in capped:
            cap = limits[queue].max_depth
            assert cap is not None
            row = await tx.fetchone("count_waiting_in_queue", {"queue": queue})
            depth = int(row["n"]) if row else 0
            if depth + wanted[queue] > cap:
                wanted[queue] -= await _live_duplicates(tx, runs, queue, now)
            if depth + wanted[queue] > cap:
                raise BackpressureError(
                    f"queue {queue!r} is full: {depth} runs waiting, cap {cap} (max_depth); "
                    f"{wanted[queue]} more rejected, nothing stored. Retry later or raise the "
                    f"cap with `perdure queues set-limit {queue} --max-depth N`",
                    queue=queue,
                    depth=depth,
                    cap=cap,
                )

    async def check_rate(self, queue: str, now: float, concurrency_key: str | None = None) -> None:
        """`rate_limit="reject"`: raise RateLimitedError when the queue's window is full, or
        the window of `concurrency_key` under the queue's per-key rate limit."""
        async with self.db.reader() as tx:
            limits = (await self.queue_limits(tx, [queue])).get(queue)
            if limits is None:
                return
            checks: list[tuple[RateLimit, str | None, str]] = []
            if limits.rate_limit is not None:
                checks.append((limits.rate_limit, None, f"queue {queue!r}"))
            if limits.key_rate_limit is not None and concurrency_key is not None:
                what = f"concurrency key {concurrency_key!r} of queue {queue!r}"
                checks.append((limits.key_rate_limit, concurrency_key, what))
            for rate, key, what in checks:
                since = now - rate.per
                params = {"queue": queue, "since": since, "concurrency_key": key}
                query = "count_recent_starts" if key is None else "count_recent_key_starts"
                row = await tx.fetchone(query, params)
                started = int(row["n"]) if row else 0
                if started < rate.limit:
                    continue
                # Room again once the oldest `started - limit + 1` starts have left the window.
                nth = await tx.fetchone(
                    "recent_start_at", {**params, "offset": started - rate.limit}
                )
                at = float(nth["at"]) if nth and nth["at"] is not None else now
                retry_after = max(at + rate.per - now, 0.0)
                raise RateLimitedError(
                    f"{what} is at its rate limit ({rate.limit} per {rate.per:g}s); retry "
                    f"after {retry_after:.2f}s. Nothing was stored.",
                    retry_after=retry_after,
                )

    async def debounce_run(
        self, new_run: NewRun, debounce_key: str, now: float
    ) -> tuple[Run, bool]:
        """Collapse into the waiting run of this debounce key (latest input, start pushed back
        to `new_run.available_at`), or create `new_run` as that key's waiting run."""
        async with self.db.transaction() as tx:
            key = {"task_id": new_run.task_id, "debounce_key": debounce_key}
            await tx.fetchall("lock_debounce", key)
            existing = await tx.fetchone("find_debounced_run", key)
            events = EventLog()
            if existing is not None:
                row = await tx.fetchone(
                    "update_debounced_run",
                    {
                        "id": existing["id"],
                        "input": new_run.input_json,
                        "available_at": new_run.available_at,
                        "now": now,
                    },
                )
                if row is not None:
                    events.add(
                        row["id"],
                        row["event_seq"],
                        "debounced",
                        now,
                        available_at=new_run.available_at,
                    )
                    await events.flush(tx)
                    return row_to_run(row), False
            await self.check_backpressure(tx, [new_run], now)
            await tx.execute("insert_run", run_insert_params(new_run, now))
            await tx.execute("set_debounce_key", {"id": new_run.id, **key})
            events.add(
                new_run.id,
                1,
                "created",
                now,
                status=new_run.status.value,
                queue=new_run.queue,
                available_at=new_run.available_at,
                debounce_key=debounce_key,
            )
            await events.flush(tx)
            tx.notify(CHANNEL_WORK)
            row = await tx.fetchone("get_run", {"id": new_run.id})
        assert row is not None
        return row_to_run(row), True

    # --- dead letters ------------------------------------------------------------------------

    async def purge_runs(self, run_ids: Sequence[str]) -> int:
        """Delete finished runs with their history and steps (one transaction)."""
        if not run_ids:
            return 0
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("get_runs", {"ids": list(run_ids)})
            finished = [r["id"] for r in rows if RunStatus(r["status"]).is_terminal]
            if not finished:
                return 0
            params = {"ids": finished}
            await tx.execute("delete_events", params)
            await tx.execute("delete_steps", params)
            return await tx.execute("delete_runs", params)

    async def select_dead_letters(
        self, *, queue: str | None, task_id: str | None, limit: int
    ) -> list[str]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall(
                "select_dead_letters", {"queue": queue, "task_id": task_id, "limit": limit}
            )
        return [row["id"] for row in rows]
