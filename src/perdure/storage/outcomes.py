"""How a batch of attempts' outcomes is written: one row per attempt for `finish_attempts`,
the events each outcome appends, the notifications its commit sends, and the result a child's
outcome leaves on its parent's waitpoint."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pydantic_core import to_json

from perdure.core.errors import ErrorInfo, StorageError
from perdure.core.models import Outcome
from perdure.core.statuses import RunStatus, can_transition
from perdure.storage.database import CHANNEL_FINISHED, CHANNEL_WORK, Tx
from perdure.storage.rows import dumps

#: The status a fenced write of a running attempt expects to find.
RUNNING = (RunStatus.RUNNING.value,)
FAILURES = frozenset({RunStatus.RETRYING, RunStatus.FAILED})
#: Ending in one of these cancels the run's unfinished descendants.
STOPS_SUBTREE = frozenset(
    {RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED, RunStatus.FINALIZE_FAILED}
)


class SettledChild(NamedTuple):
    """A child run's end as its parent's waitpoint records it."""

    run_id: str
    status: str
    #: {"status", "output", "error"} as JSON text: what the waitpoint stores.
    result: str
    #: The child's output as JSON text (a completed child), else None.
    output: str | None


def settled_result(
    run_id: str, status: RunStatus, output_json: str | None, error: ErrorInfo | None
) -> SettledChild:
    """A child's settled result. The output is already JSON text: spliced in, not parsed and
    serialized again."""
    error_json = "null" if error is None else dumps(error.to_json())
    result = f'{{"status":"{status.value}","output":{output_json or "null"},"error":{error_json}}}'
    output = (output_json or "null") if status is RunStatus.COMPLETED else None
    return SettledChild(run_id, status.value, result, output)


def finish_params(
    worker_id: str,
    now: float,
    events: Iterable[tuple[str, int, list[tuple[str, str]]]] | None,
    *,
    roots_only: bool = False,
    notify: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Shared parameters of the `finish_attempts` batch statement. `events` (PostgreSQL,
    whose statement writes them): per attempt, (run id, attempt, its events as (type, data
    JSON)). `roots_only`: apply only runs that settle no parent. `notify`: the statement's
    own NOTIFY (`Tx.notifications_in_statement`); without it the commit sends it."""
    shared: dict[str, Any] = {
        "worker_id": worker_id,
        "now": now,
        "from_statuses": RUNNING,
        "roots_only": roots_only,
        "notify_channel": None,
        "notify_payload": None,
        **(notify or {}),
    }
    if events is not None:
        shared["events"] = to_json(
            [
                {"run_id": run_id, "attempt": attempt, "k": k, "type": type_, "data": data}
                for run_id, attempt, new_events in events
                for k, (type_, data) in enumerate(new_events, start=1)
            ]
        ).decode()
    return shared


class OutcomeBatch:
    """A batch of outcomes as `finish_attempts` sends it: one row per attempt (a repeated
    attempt once), in run-id order, and the events each appends."""

    def __init__(self, outcomes: Sequence[Outcome], now: float, *, events_in_sql: bool) -> None:
        self.outcomes = outcomes
        self.events_in_sql = events_in_sql
        # Run-id order, as extend_leases locks rows, so this batch and a concurrent heartbeat
        # of the same worker cannot deadlock (PostgreSQL row locks).
        self.order = sorted(range(len(outcomes)), key=lambda k: outcomes[k].run_id)
        self.events: dict[int, list[tuple[str, str]]] = {}
        self.rows: list[dict[str, Any]] = []
        seen: set[tuple[str, int]] = set()
        for idx in self.order:
            out = outcomes[idx]
            if not can_transition(RunStatus.RUNNING, out.status):
                raise StorageError(f"an attempt cannot end in status {out.status.value!r}")
            if (out.run_id, out.attempt) in seen:
                # The same attempt twice: only its first outcome can apply, as if the two were
                # applied one after the other (the second finds the run no longer running).
                continue
            seen.add((out.run_id, out.attempt))
            retrying = out.status is RunStatus.RETRYING
            error = None if out.error is None else out.error.to_json()
            self.events[idx] = new_events = outcome_events(out, error)
            self.rows.append(
                {
                    "id": out.run_id,
                    "attempt": out.attempt,
                    "status": out.status.value,
                    "output": out.output_json,
                    "error": None if error is None else dumps(error),
                    "available_at": out.retry_at if retrying else None,
                    "finished_at": None if retrying else now,
                    "n_events": len(new_events),
                    "failed": 1 if out.status in FAILURES else 0,
                }
            )

    def shared(
        self,
        worker_id: str,
        now: float,
        *,
        roots_only: bool = False,
        notify: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The batch statement's shared parameters (see `finish_params`)."""
        events = (
            [
                (self.outcomes[idx].run_id, self.outcomes[idx].attempt, e)
                for idx, e in self.events.items()
            ]
            if self.events_in_sql
            else None
        )
        return finish_params(worker_id, now, events, roots_only=roots_only, notify=notify)

    def applied(self, landed: set[tuple[str, int]]) -> list[bool]:
        """Which outcomes landed, given the (run, attempt) keys the statement returned."""
        applied = [False] * len(self.outcomes)
        for idx in self.events:  # first outcomes of their attempt only
            out = self.outcomes[idx]
            applied[idx] = (out.run_id, out.attempt) in landed
        return applied


#: Outcomes whose commit needs nothing besides the run's own row and events: no parent to
#: settle (a retry settles nothing) and no subtree to cancel.
ALONE = frozenset({RunStatus.COMPLETED, RunStatus.RETRYING})


def ends_alone(out: Outcome) -> bool:
    return out.status in ALONE and (out.parent_id is None or out.status is RunStatus.RETRYING)


def notify_ends(tx: Tx, outcomes: Sequence[Outcome]) -> None:
    """`finished` for each run that ended, `work` once if any will be retried."""
    work = False
    for out in outcomes:
        if out.status is RunStatus.RETRYING:
            work = True
        else:
            tx.notify(CHANNEL_FINISHED, out.run_id)
    if work:
        tx.notify(CHANNEL_WORK)


def outcome_events(out: Outcome, error: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The events an outcome appends, as (type, data JSON)."""
    status = out.status.value
    if out.status is RunStatus.COMPLETED:  # the usual outcome: JSON made directly
        return [("completed", f'{{"status":"completed","attempt":{int(out.attempt)}}}')]
    if out.status is RunStatus.CANCELLED:
        return [("cancelled", dumps({"status": status, "attempt": out.attempt, "error": error}))]
    failed = ("attempt_failed", dumps({"attempt": out.attempt, "error": error}))
    if out.status is RunStatus.RETRYING:
        scheduled = {"status": status, "attempt": out.attempt + 1, "retry_at": out.retry_at}
        return [failed, ("retry_scheduled", dumps(scheduled))]
    return [failed, (status, dumps({"status": status, "attempt": out.attempt}))]
