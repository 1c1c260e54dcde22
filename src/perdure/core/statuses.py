"""Run statuses and the transition table: the only place transitions are decided.

Storage turns these tables into `WHERE status IN (...)` conditions, so the database enforces
the same rules (a conditional UPDATE cannot move a run out of a terminal status).
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    DELAYED = "delayed"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUSPENDED = "suspended"
    WAITING_FOR_CHILDREN = "waiting_for_children"
    WAITING_FOR_FINALIZE = "waiting_for_finalize"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    FINALIZE_FAILED = "finalize_failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


S = RunStatus

TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {S.COMPLETED, S.FAILED, S.TIMED_OUT, S.FINALIZE_FAILED, S.CANCELLED, S.EXPIRED}
)

#: Runs in these statuses wait for a worker to claim them (once `available_at` is due).
CLAIMABLE_STATUSES: frozenset[RunStatus] = frozenset({S.DELAYED, S.QUEUED, S.RETRYING})

#: Statuses in which a run holds no worker slot but is not finished.
WAITING_STATUSES: frozenset[RunStatus] = frozenset(
    {S.SUSPENDED, S.WAITING_FOR_CHILDREN, S.WAITING_FOR_FINALIZE}
)

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # A due delayed run is claimed directly; it may also be promoted to queued.
    S.DELAYED: frozenset({S.QUEUED, S.RUNNING, S.CANCELLED, S.EXPIRED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.EXPIRED}),
    S.RUNNING: frozenset(
        {
            S.COMPLETED,
            S.FAILED,
            S.TIMED_OUT,
            S.CANCELLED,
            S.RETRYING,
            S.QUEUED,  # lease lost or released at shutdown: back in line
            S.SUSPENDED,
            S.WAITING_FOR_CHILDREN,
            S.WAITING_FOR_FINALIZE,
            S.FINALIZE_FAILED,  # a finalize function failed
        }
    ),
    # A retry keeps the run's place: TTL no longer applies once it has started.
    S.RETRYING: frozenset({S.RUNNING, S.CANCELLED, S.QUEUED}),
    # A suspended run whose wake-up is due (sleep over, token or child settled) is claimed
    # directly, like a due delayed run.
    S.SUSPENDED: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED, S.FAILED, S.TIMED_OUT}),
    # Once its children (or its finalize task) settle, a waiting parent is claimed again to
    # carry on (run finalize, or complete), exactly like a woken suspended run.
    S.WAITING_FOR_CHILDREN: frozenset(
        {
            S.RUNNING,
            S.QUEUED,
            S.WAITING_FOR_FINALIZE,
            S.COMPLETED,
            S.FINALIZE_FAILED,
            S.CANCELLED,
            S.FAILED,
            S.TIMED_OUT,
        }
    ),
    S.WAITING_FOR_FINALIZE: frozenset(
        {S.RUNNING, S.COMPLETED, S.FINALIZE_FAILED, S.CANCELLED, S.FAILED, S.TIMED_OUT}
    ),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.FINALIZE_FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.EXPIRED: frozenset(),
}


def can_transition(source: RunStatus, target: RunStatus) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: RunStatus) -> tuple[str, ...]:
    """Every status a run may move to `target` from, as strings for SQL `IN` lists."""
    return tuple(sorted(s.value for s, targets in TRANSITIONS.items() if target in targets))


def non_terminal() -> tuple[str, ...]:
    return tuple(sorted(s.value for s in RunStatus if not s.is_terminal))


def parse_status(value: str) -> RunStatus:
    """Parse a status name given by a user, with an error listing the allowed values."""
    from perdure.core.errors import InvalidOptionError

    try:
        return RunStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise InvalidOptionError("status", f"one of: {allowed}", value) from None
