"""Steps and waitpoints of durable functions (the `perdure_steps` aggregate).

Each durable call of a body takes the next position of its run. Writes are fenced on the run
row (run id, attempt, lease owner, running) — `fence_and_bump`, or `record_steps` for the
records of steps, sleeps and tokens (group-committed, `records.py`) — which also reserves
event numbers; waits serialize with their completions on the waitpoint rows, so a completion
that lands while the run is suspending still wakes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perdure.core.errors import DuplicateRunError, ErrorInfo, StorageError
from perdure.core.models import NewRun, StepRecord
from perdure.core.statuses import WAITING_STATUSES, RunStatus, sources_of
from perdure.storage.database import (
    CHANNEL_CANCEL,
    CHANNEL_FINISHED,
    CHANNEL_WORK,
    ConflictError,
    Database,
    Row,
    Tx,
)
from perdure.storage.outcomes import SettledChild, settled_result
from perdure.storage.records import GroupCommit, Records
from perdure.storage.rows import dumps, loads_json
from perdure.storage.writes import EventLog, run_insert_params

STEP_PENDING = "pending"
STEP_COMPLETED = "completed"
STEP_FAILED = "failed"

#: Statuses a run waits in; a settled waitpoint makes such a run claimable again.
WAITING = sorted(s.value for s in WAITING_STATUSES)


def row_to_step(row: Row) -> StepRecord:
    error = loads_json(row["error"])
    return StepRecord(
        run_id=row["run_id"],
        position=row["position"],
        kind=row["kind"],
        name=row["name"],
        status=row["status"],
        output=loads_json(row["output"]),
        error=None if error is None else ErrorInfo.from_json(error),
        wake_at=row["wake_at"],
        token_id=row["token_id"],
        child_run_id=row["child_run_id"],
        batch=row["batch"],
        attempt=row["attempt"],
    )


def record_events(steps: Sequence[StepRecord]) -> list[tuple[str, str]]:
    """The events a write of new records appends, as (type, data JSON): one
    `<kind>_recorded` per record, except child waits: one `children_recorded` per batch
    (the children of one `batch_trigger_and_wait` or parent are one change of the run,
    written in one transaction; `docs/decisions.md`)."""
    events: list[tuple[str, str]] = []
    batch: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        if step.kind != "child":
            events.append((f"{step.kind}_recorded", dumps(step_event_data(step))))
            continue
        batch.append(
            {"position": step.position, "name": step.name, "child_run_id": step.child_run_id}
        )
        following = steps[i + 1] if i + 1 < len(steps) else None
        if following is None or following.kind != "child" or following.batch != step.batch:
            data = {"batch": step.batch, "count": len(batch), "children": batch}
            events.append(("children_recorded", dumps(data)))
            batch = []
    return events


def step_event_data(step: StepRecord) -> dict[str, Any]:
    """The data of the `<kind>_recorded` event written with a record (not a child wait's:
    see `record_events`)."""
    data: dict[str, Any] = {
        "position": step.position,
        "kind": step.kind,
        "name": step.name,
        "status": step.status,
    }
    if step.child_run_id:
        data["child_run_id"] = step.child_run_id
    if step.token_id:
        data["token_id"] = step.token_id
    if step.error is not None:
        data["error"] = step.error.to_json()
    return data


def _step_params(step: StepRecord, now: float) -> dict[str, Any]:
    settled = step.status != STEP_PENDING
    return {
        "run_id": step.run_id,
        "position": step.position,
        "kind": step.kind,
        "name": step.name,
        "status": step.status,
        "output": None if step.output is None else dumps(step.output),
        "error": None if step.error is None else dumps(step.error.to_json()),
        "wake_at": step.wake_at,
        "token_id": step.token_id,
        "child_run_id": step.child_run_id,
        "batch": step.batch,
        "attempt": step.attempt,
        "now": now,
        "completed_at": now if settled else None,
    }


class Fence:
    """Identifies the running attempt a durable write belongs to."""

    __slots__ = ("attempt", "run_id", "worker_id")

    def __init__(self, run_id: str, attempt: int, worker_id: str) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.worker_id = worker_id

    def params(self, now: float, n_events: int) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "attempt": self.attempt,
            "worker_id": self.worker_id,
            "now": now,
            "n_events": n_events,
        }


@dataclass(frozen=True, slots=True)
class Spawn:
    """A tree node's wait, written at once: the child waits (`steps`) of its attempt (`fence`),
    the children they wait for, the records those start with, and the status it waits in."""

    fence: Fence
    steps: Sequence[StepRecord]
    children: Sequence[NewRun]
    child_steps: Sequence[StepRecord]
    status: RunStatus

    def __post_init__(self) -> None:
        if self.status not in WAITING_STATUSES:
            raise ValueError(f"cannot suspend into status {self.status.value!r}")


class StepStore:
    """Mixed into `Storage`: operations on steps, tokens and child waits."""

    db: Database
    _records_writer: GroupCommit | None = None

    async def load_steps(self, run_id: str) -> list[StepRecord]:
        async with self.db.reader() as tx:
            rows = await tx.fetchall("load_steps", {"run_id": run_id})
        return [row_to_step(row) for row in rows]

    async def load_steps_of(self, run_ids: Sequence[str]) -> dict[str, list[StepRecord]]:
        """`load_steps` of several runs in one read: run id -> its records, by position."""
        async with self.db.reader() as tx:
            rows = await tx.fetchall("load_steps_of", {"run_ids": list(run_ids)})
        found: dict[str, list[StepRecord]] = {}
        for row in rows:
            found.setdefault(row["run_id"], []).append(row_to_step(row))
        return found

    async def record_steps(
        self,
        fence: Fence,
        steps: Sequence[StepRecord],
        now: float,
        *,
        children: Sequence[NewRun] = (),
        child_steps: Sequence[StepRecord] = (),
    ) -> bool:
        """Record durable calls (and create child runs, with the records they start with:
        a sleeping task's token) atomically, fenced on the attempt. `False`: the attempt lost
        its lease; nothing was written. `DuplicateRunError`: a token id is taken by another
        run (a sleeping task's unique id used twice); nothing was written."""
        if not children and not child_steps:
            try:
                return await self._group_commit().record(_records(fence, steps, now))
            except ConflictError:
                pass  # a position or token id is taken: the transaction below says which
        try:
            return await self._record_in_transaction(
                fence, steps, now, children=children, child_steps=child_steps
            )
        except _PositionTakenError:
            # A commit whose reply was lost, tried again (Worker.durable_write): the first
            # try wrote these very records, children included (one transaction).
            if await self._recorded_by(fence, steps):
                return True
            positions = ", ".join(str(step.position) for step in steps)
            raise ConflictError(
                f"run {fence.run_id} attempt {fence.attempt}: position(s) {positions} are "
                "already recorded with other calls; nothing was stored"
            ) from None

    def _group_commit(self) -> GroupCommit:
        if self._records_writer is None:
            self._records_writer = GroupCommit(self.db)
        return self._records_writer

    async def _recorded_by(self, fence: Fence, steps: Sequence[StepRecord]) -> bool:
        """Whether exactly these records are stored, written by this very attempt."""
        stored = {s.position: s for s in await self.load_steps(fence.run_id)}
        return all(
            step.attempt == fence.attempt and stored.get(step.position) == step for step in steps
        )

    async def _record_in_transaction(
        self,
        fence: Fence,
        steps: Sequence[StepRecord],
        now: float,
        *,
        children: Sequence[NewRun] = (),
        child_steps: Sequence[StepRecord] = (),
    ) -> bool:
        new_events = record_events(steps)
        n_events = len(new_events)
        async with self.db.transaction() as tx:
            bumped = await tx.fetchone("fence_and_bump", fence.params(now, n_events))
            if bumped is None:
                return False
            events = EventLog()
            _add_events(events, fence.run_id, bumped["event_seq"] - n_events + 1, new_events, now)
            parent_ids = [fence.run_id] * len(children)
            await _insert_records(tx, events, parent_ids, steps, children, child_steps, now)
        return True

    async def suspend_with_children(self, spawns: Sequence[Spawn], now: float) -> list[bool]:
        """Several attempts' `Spawn`s in one transaction (a group commit): each records its
        child waits, creates its children and suspends its run, fenced on its own attempt.
        `False` for a spawn whose attempt lost its lease: nothing of it was written. An error
        (`DuplicateRunError`: a token id is taken) rolls back the whole group."""
        applied = [False] * len(spawns)
        steps: list[StepRecord] = []
        children: list[NewRun] = []
        child_steps: list[StepRecord] = []
        run_ids: list[str] = []
        events = EventLog()
        # Run-id order, as finish_attempts and extend_leases lock rows (PostgreSQL deadlocks).
        order = sorted(range(len(spawns)), key=lambda k: spawns[k].fence.run_id)
        new_events = [record_events(spawn.steps) for spawn in spawns]
        # No wake-up time: the waitpoints are created pending in this transaction, so none
        # can have settled before it commits; their settlement wakes the run.
        rows = [
            {
                "id": spawns[idx].fence.run_id,
                "attempt": spawns[idx].fence.attempt,
                "worker_id": spawns[idx].fence.worker_id,
                "status": spawns[idx].status.value,
                "n_events": len(new_events[idx]) + 1,
            }
            for idx in order
        ]
        async with self.db.transaction() as tx:
            suspended = await tx.fetch_batch("suspend_runs", rows, {"now": now})
            seqs = {(row["id"], row["attempt"]): row["event_seq"] for row in suspended}
            for idx in order:
                spawn = spawns[idx]
                fence, n_events = spawn.fence, len(new_events[idx]) + 1
                seq = seqs.get((fence.run_id, fence.attempt))
                if seq is None:  # the attempt lost its lease: nothing of it is written
                    continue
                applied[idx] = True
                _add_events(events, fence.run_id, seq - n_events + 1, new_events[idx], now)
                events.add(
                    fence.run_id,
                    seq,
                    "suspended",
                    now,
                    status=spawn.status.value,
                    attempt=fence.attempt,
                    wake_at=None,
                    waiting_for=[step.position for step in spawn.steps],
                )
                run_ids += [fence.run_id] * len(spawn.children)
                steps += spawn.steps
                children += spawn.children
                child_steps += spawn.child_steps
            await _insert_records(tx, events, run_ids, steps, children, child_steps, now)
        return applied

    async def suspend(
        self,
        fence: Fence,
        wait_positions: Sequence[int],
        wake_at: float | None,
        now: float,
        status: RunStatus = RunStatus.SUSPENDED,
    ) -> bool:
        """Release the slot and wait (as `status`: suspended, or a parent waiting for children
        or its finalize task). Wakes at `wake_at`, or at once if every waitpoint in
        `wait_positions` has already settled (a completion that raced the suspension)."""
        if status not in WAITING_STATUSES:
            raise ValueError(f"cannot suspend into status {status.value!r}")
        async with self.db.transaction() as tx:
            available_at = wake_at
            if wait_positions:
                rows = await tx.fetchall(
                    "lock_waitpoints", {"run_id": fence.run_id, "positions": list(wait_positions)}
                )
                if rows and all(row["status"] != STEP_PENDING for row in rows):
                    available_at = now
            row = await tx.fetchone(
                "suspend_run",
                {**fence.params(now, 1), "available_at": available_at, "status": status.value},
            )
            if row is None:
                return False
            events = EventLog()
            events.add(
                fence.run_id,
                row["event_seq"],
                "suspended",
                now,
                status=status.value,
                attempt=fence.attempt,
                wake_at=available_at,
                waiting_for=list(wait_positions),
            )
            await events.flush(tx)
            if available_at is not None and available_at <= now:
                tx.notify(CHANNEL_WORK)
        return True

    async def complete_token(
        self, token_id: str, output_json: str | None, error: ErrorInfo | None, now: float
    ) -> tuple[StepRecord | None, bool]:
        """Complete a wait token; the first completion wins. Returns `(record, changed)`;
        `record` is None for an unknown token."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "complete_token",
                {
                    "token_id": token_id,
                    "now": now,
                    "output": output_json,
                    "status": STEP_FAILED if error is not None else STEP_COMPLETED,
                    "error": None if error is None else dumps(error.to_json()),
                },
            )
            if row is not None:
                woke = await tx.fetchone(
                    "wake_run", {"id": row["run_id"], "now": now, "waiting": WAITING}
                )
                seq_row = woke or await tx.fetchone(
                    "bump_event_seq", {"id": row["run_id"], "n_events": 1}
                )
                if seq_row is not None:
                    events = EventLog()
                    events.add(
                        row["run_id"],
                        seq_row["event_seq"],
                        "token_completed",
                        now,
                        token_id=token_id,
                        position=row["position"],
                        ok=error is None,
                    )
                    await events.flush(tx)
                if woke is not None:
                    tx.notify(CHANNEL_WORK)
            current = await tx.fetchone("get_token", {"token_id": token_id})
        return (None if current is None else row_to_step(current)), row is not None

    async def get_token(self, token_id: str) -> StepRecord | None:
        async with self.db.reader() as tx:
            row = await tx.fetchone("get_token", {"token_id": token_id})
        return None if row is None else row_to_step(row)

    async def update_metadata(self, fence: Fence, metadata: dict[str, Any], now: float) -> bool:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "update_metadata", {**fence.params(now, 1), "metadata": dumps(metadata)}
            )
            if row is None:
                return False
            events = EventLog()
            events.add(fence.run_id, row["event_seq"], "metadata", now, metadata=metadata)
            await events.flush(tx)
        return True

    async def append_events(
        self, fence: Fence, events_data: Sequence[tuple[str, dict[str, Any]]], now: float
    ) -> bool:
        """Progress and log lines of a running attempt, as events (fenced; written like step
        records, so on PostgreSQL in one statement, group-committed)."""
        if not events_data:
            return True
        events = [
            {"run_id": fence.run_id, "n": i, "type": type_, "at": now, "data": dumps(data)}
            for i, (type_, data) in enumerate(events_data, start=1)
        ]
        writer = self._group_commit()

        def records() -> Records:  # fresh, lists too: a batch may merge others into one
            fence_row = _fence_row(fence, len(events), now)
            return Records(fence=fence_row, steps=[], events=list(events))

        try:
            return await writer.record(records())
        except ConflictError:
            # Another run's record in the same batch was refused (a taken token id): events
            # take no position, so written alone they conflict with nothing.
            return await writer.record(records(), alone=True)

    async def fork_run(self, new_run: NewRun, source_run_id: str, upto: int, now: float) -> None:
        """Create `new_run` with the source's step records before position `upto` (one
        transaction), so its body replays them instead of running them again."""
        async with self.db.transaction() as tx:
            await tx.execute("insert_run", run_insert_params(new_run, now))
            await tx.execute(
                "copy_steps",
                {
                    "new_run_id": new_run.id,
                    "now": now,
                    "source_run_id": source_run_id,
                    "upto": upto,
                },
            )
            events = EventLog()
            events.add(
                new_run.id,
                1,
                "created",
                now,
                status=new_run.status.value,
                queue=new_run.queue,
                forked_from=source_run_id,
                reused_steps=upto,
            )
            await events.flush(tx)
            tx.notify(CHANNEL_WORK)

    async def create_run_with_steps(
        self, new_run: NewRun, steps: Sequence[StepRecord], now: float
    ) -> bool:
        """Insert a run together with step records it starts with (a sleeping task's token),
        in one transaction. `False`, with nothing stored, when a record's token id is taken."""
        try:
            async with self.db.transaction() as tx:
                await tx.execute("insert_run", run_insert_params(new_run, now))
                for step in steps:
                    if await tx.fetchone("insert_step", _step_params(step, now)) is None:
                        raise _PositionTaken
                events = EventLog()
                events.add(
                    new_run.id, 1, "created", now, status=new_run.status.value, queue=new_run.queue
                )
                await events.flush(tx)
                tx.notify(CHANNEL_WORK)
        except _PositionTakenError:
            return False
        return True

    async def wake_missed(self, now: float, limit: int = 100) -> list[str]:
        """Safety sweep: suspended runs with nothing pending and no wake-up time resume."""
        woken: list[str] = []
        events = EventLog()
        async with self.db.reader() as tx:
            if not await tx.fetchall("select_missed_wakeups", {"limit": 1, "waiting": WAITING}):
                return []
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("select_missed_wakeups", {"limit": limit, "waiting": WAITING})
            for row in rows:
                woke = await tx.fetchone(
                    "wake_run", {"id": row["id"], "now": now, "waiting": WAITING}
                )
                if woke is not None:
                    woken.append(row["id"])
                    events.add(
                        row["id"],
                        woke["event_seq"],
                        "resumed",
                        now,
                        reason="safety sweep: nothing left pending",
                    )
            await events.flush(tx)
            if woken:
                tx.notify(CHANNEL_WORK)
        return woken


def _add_events(
    events: EventLog, run_id: str, first: int, new_events: Sequence[tuple[str, str]], now: float
) -> None:
    """A run's new events (`record_events`), numbered from `first`."""
    for i, (type_, data) in enumerate(new_events):
        events.add_json(run_id, first + i, type_, now, data)


async def _insert_records(
    tx: Tx,
    events: EventLog,
    parent_ids: Sequence[str],
    steps: Sequence[StepRecord],
    children: Sequence[NewRun],
    child_steps: Sequence[StepRecord],
    now: float,
) -> None:
    """Insert records, child runs (`parent_ids[i]` created `children[i]`), the records the
    children start with, and `events` plus the children's `created` events: one batch
    statement each (one round trip each on PostgreSQL)."""
    await _insert_steps(tx, steps, now)
    if children:
        try:
            await tx.execute_batch(
                "insert_runs", [run_insert_params(child, now) for child in children]
            )
        except ConflictError as exc:
            raise StorageError(
                f"child runs of run(s) {', '.join(sorted(set(parent_ids)))} could not be "
                f"inserted (an id or idempotency key is taken); nothing was stored: {exc}"
            ) from exc
        # Children of one parent share their `created` event's data: serialize it once.
        by_kind: dict[tuple[str, str, str], str] = {}
        for parent_id, child in zip(parent_ids, children, strict=True):
            kind = (child.status.value, child.queue, parent_id)
            data_json = by_kind.get(kind)
            if data_json is None:
                data = {"status": kind[0], "queue": kind[1], "parent_id": parent_id}
                data_json = by_kind[kind] = dumps(data)
            events.add_json(child.id, 1, "created", now, data_json)
    await _insert_steps(tx, child_steps, now)
    await events.flush(tx)
    if children:
        tx.notify(CHANNEL_WORK)


async def settle_child_waits(tx: Tx, settled: Sequence[SettledChild], now: float) -> None:
    """In the transaction that finishes child runs: record each child's settled result on its
    parent's waitpoint and wake parents whose whole batch has settled (same commit, so a
    parent can never miss its wake-up). A parent waiting for its finalize task, which
    completed, completes here with the task's output (its body would only return it), and in
    turn settles its own parent's waitpoint."""
    while settled:
        settled = await _settle_round(tx, settled, now)


async def _settle_round(tx: Tx, settled: Sequence[SettledChild], now: float) -> list[SettledChild]:
    """One level of `settle_child_waits`; returns the parents it completed that are children
    themselves."""
    # One batch statement for every child of the commit (one round trip on PostgreSQL, which
    # also locks their parents there, in id order: see the query).
    rows = await tx.fetchall(
        "settle_child_waits",
        {
            "rows": dumps([{"child_run_id": c.run_id, "output": c.result} for c in settled]),
            "now": now,
        },
    )
    waits = {row["child_run_id"]: row for row in rows}
    # Per parent, not per child: a group commit often settles many children of one parent.
    by_parent: dict[str, tuple[list[SettledChild], set[int]]] = {}
    for child in settled:
        row = waits.get(child.run_id)
        if row is None:  # not a child wait (a run triggered with a parent id only), or settled
            continue
        children, batches = by_parent.setdefault(row["run_id"], ([], set()))
        children.append(child)
        batches.add(row["batch"])
    if not by_parent:
        return []
    woken = False
    completed: list[SettledChild] = []
    events = EventLog()
    # Parents in id order, so concurrent settlements lock parent rows in the same order. The
    # parent row is locked (bump) before the batch is checked, in a later statement: of two
    # transactions settling a batch's last children, the second sees the first's settlement
    # and wakes the parent.
    parent_ids = sorted(by_parent)
    # One `children_settled` event per parent: its children settled in this commit are one
    # change of it (each child's own history has its end).
    bumped = await tx.fetchall("bump_event_seqs", {"ids": parent_ids})
    for row in bumped:
        parent_id = row["id"]
        children = by_parent[parent_id][0]
        events.add(
            parent_id,
            row["event_seq"],
            "children_settled",
            now,
            count=len(children),
            children=[{"child_run_id": c.run_id, "status": c.status} for c in children],
        )
    # One statement per round, one row per parent in each: a parent waiting on several
    # batches (rare) has its later batches checked in later rounds, in batch order.
    batches = [(p, sorted(by_parent[p][1])) for p in parent_ids]
    for round_ in range(max(len(b) for _, b in batches)):
        checks = {p: b[round_] for p, b in batches if round_ < len(b)}
        rows = [_wake_row(p, b, by_parent[p][0]) for p, b in checks.items()]
        woke_rows = await tx.fetchall(
            "wake_if_settled", {"rows": dumps(rows), "now": now, "waiting": WAITING}
        )
        for woke in sorted(woke_rows, key=lambda row: row["id"]):
            if woke["status"] == RunStatus.COMPLETED:
                data = {"status": "completed", "attempt": woke["attempt"], "by": "finalize task"}
                events.add(woke["id"], woke["event_seq"], "completed", now, **data)
                tx.notify(CHANNEL_FINISHED, woke["id"])
                if woke["parent_id"] is not None:
                    result = settled_result(woke["id"], RunStatus.COMPLETED, woke["output"], None)
                    completed.append(result)
                continue
            woken = True
            events.add(
                woke["id"],
                woke["event_seq"],
                "resumed",
                now,
                reason="children settled",
                batch=checks[woke["id"]],
            )
    await events.flush(tx)
    if woken:
        tx.notify(CHANNEL_WORK)
    return completed


def _wake_row(parent_id: str, batch: int, children: list[SettledChild]) -> dict[str, Any]:
    """A `wake_if_settled` row. `complete`: the one child settled in this commit completed,
    so if the parent waits for it as its finalize task, the parent completes with its output
    (the query checks the status)."""
    output = children[0].output if len(children) == 1 else None
    return {"id": parent_id, "batch": batch, "complete": output is not None, "output": output}


async def cancel_descendants(tx: Tx, parent_ids: Sequence[str], now: float, reason: str) -> None:
    """Cancel every unfinished run below these (now finished) runs, at any depth, in the same
    transaction. Their workers learn of it through the `cancel` notification or their
    heartbeat's ownership check, like any cancellation."""
    if not parent_ids:
        return
    error = ErrorInfo(type="RunCancelledError", message=reason, retryable=False)
    rows = await tx.fetchall(
        "cancel_descendants",
        {
            "ids": list(parent_ids),
            "now": now,
            "error": dumps(error.to_json()),
            "from_statuses": sources_of(RunStatus.CANCELLED),
        },
    )
    events = EventLog()
    for row in rows:
        events.add(row["id"], row["event_seq"], "cancelled", now, status="cancelled", reason=reason)
        tx.notify(CHANNEL_CANCEL, row["id"])
        tx.notify(CHANNEL_FINISHED, row["id"])
    await events.flush(tx)


async def _insert_steps(tx: Tx, steps: Sequence[StepRecord], now: float) -> None:
    """Insert records in one batch statement; roll the transaction back if a position or a
    token id is taken."""
    if not steps:
        return
    params = [_step_params(step, now) for step in steps]
    inserted = await tx.execute_batch("insert_steps_counted", params)
    if inserted == len(steps):
        return
    for step in steps:
        if step.token_id is None:
            continue
        owner = await tx.fetchone("get_token", {"token_id": step.token_id})
        if owner is not None and owner["run_id"] != step.run_id:
            raise DuplicateRunError(
                f"wait token {step.token_id!r} already belongs to run {owner['run_id']}; "
                f"run {step.run_id} cannot take it (nothing was stored)"
            )
    raise _PositionTaken


def _fence_row(fence: Fence, n_events: int, now: float) -> dict[str, Any]:
    return {
        "id": fence.run_id,
        "attempt": fence.attempt,
        "worker_id": fence.worker_id,
        "n_events": n_events,
        "now": now,
    }


def _records(fence: Fence, steps: Sequence[StepRecord], now: float) -> Records:
    """The rows one fenced write of records inserts (`records.py` writes them)."""
    new_events = record_events(steps)
    return Records(
        fence=_fence_row(fence, len(new_events), now),
        steps=[_step_params(step, now) for step in steps],
        events=[
            {"run_id": fence.run_id, "n": i, "type": type_, "at": now, "data": data}
            for i, (type_, data) in enumerate(new_events, start=1)
        ],
    )


class _PositionTakenError(Exception):
    """Raised inside a transaction to roll it back when a position is already recorded."""


_PositionTaken = _PositionTakenError()
