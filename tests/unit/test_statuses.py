"""The run state machine: statuses, the transition table and the helpers storage builds on."""

from __future__ import annotations

import itertools

import pytest

from perdure.core.errors import InvalidOptionError
from perdure.core.statuses import (
    CLAIMABLE_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    WAITING_STATUSES,
    RunStatus,
    can_transition,
    non_terminal,
    parse_status,
    sources_of,
)

# The public string values, in DESIGN.md order. Changing one breaks stored data and clients.
DESIGN_VALUES = [
    "delayed",
    "queued",
    "running",
    "retrying",
    "suspended",
    "waiting_for_children",
    "waiting_for_finalize",
    "completed",
    "failed",
    "timed_out",
    "finalize_failed",
    "cancelled",
    "expired",
]
DESIGN_TERMINAL = {"completed", "failed", "timed_out", "finalize_failed", "cancelled", "expired"}

# Every allowed transition, written out by hand. Editing TRANSITIONS must edit this too.
EXPECTED_TRANSITIONS: dict[str, set[str]] = {
    "delayed": {"queued", "running", "cancelled", "expired"},
    "queued": {"running", "cancelled", "expired"},
    "running": {
        "completed",
        "failed",
        "timed_out",
        "cancelled",
        "retrying",
        "queued",
        "suspended",
        "waiting_for_children",
        "waiting_for_finalize",
        "finalize_failed",
    },
    "retrying": {"running", "cancelled", "queued"},
    "suspended": {"running", "queued", "cancelled", "failed", "timed_out"},
    "waiting_for_children": {
        "running",
        "queued",
        "waiting_for_finalize",
        "completed",
        "finalize_failed",
        "cancelled",
        "failed",
        "timed_out",
    },
    "waiting_for_finalize": {
        "running",
        "completed",
        "finalize_failed",
        "cancelled",
        "failed",
        "timed_out",
    },
    "completed": set(),
    "failed": set(),
    "timed_out": set(),
    "finalize_failed": set(),
    "cancelled": set(),
    "expired": set(),
}

ALL_PAIRS = list(itertools.product(DESIGN_VALUES, DESIGN_VALUES))


def test_status_values_match_design() -> None:
    assert [s.value for s in RunStatus] == DESIGN_VALUES


def test_statuses_are_strings() -> None:
    assert RunStatus.WAITING_FOR_CHILDREN == "waiting_for_children"
    assert str(RunStatus.TIMED_OUT) == "timed_out"
    assert f"{RunStatus.QUEUED}" == "queued"


def test_expected_table_covers_every_status() -> None:
    assert set(EXPECTED_TRANSITIONS) == set(DESIGN_VALUES)
    assert {s.value for s in TRANSITIONS} == set(DESIGN_VALUES)


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_can_transition_matches_expected_table(source: str, target: str) -> None:
    expected = target in EXPECTED_TRANSITIONS[source]
    assert can_transition(RunStatus(source), RunStatus(target)) is expected


def test_no_status_transitions_to_itself() -> None:
    assert [s for s in RunStatus if can_transition(s, s)] == []


def test_terminal_statuses_match_design() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == DESIGN_TERMINAL
    assert {s.value for s in RunStatus if s.is_terminal} == DESIGN_TERMINAL


@pytest.mark.parametrize("status", sorted(DESIGN_TERMINAL))
def test_terminal_status_has_no_outgoing_transition(status: str) -> None:
    assert TRANSITIONS[RunStatus(status)] == frozenset()
    assert [t for t in RunStatus if can_transition(RunStatus(status), t)] == []


@pytest.mark.parametrize("status", [s for s in DESIGN_VALUES if s not in DESIGN_TERMINAL])
def test_every_unfinished_status_can_be_cancelled(status: str) -> None:
    assert can_transition(RunStatus(status), RunStatus.CANCELLED)


def test_nothing_transitions_back_to_delayed() -> None:
    # `delayed` is only an initial status, chosen when a run is created with a delay.
    assert sources_of(RunStatus.DELAYED) == ()


@pytest.mark.parametrize("target", DESIGN_VALUES)
def test_sources_of_is_consistent_with_transitions(target: str) -> None:
    expected = tuple(sorted(s for s, targets in EXPECTED_TRANSITIONS.items() if target in targets))
    assert sources_of(RunStatus(target)) == expected
    assert all(isinstance(s, str) and not isinstance(s, RunStatus) for s in expected)


def test_sources_of_claim_and_expiry() -> None:
    # Storage claims runs `WHERE status IN sources_of(RUNNING)` and expires by TTL the same way.
    # A suspended run is claimed once its wake-up is due.
    # A waiting run (suspended, or a parent whose children settled) is claimed once woken.
    assert sources_of(RunStatus.RUNNING) == (
        "delayed",
        "queued",
        "retrying",
        "suspended",
        "waiting_for_children",
        "waiting_for_finalize",
    )
    assert set(sources_of(RunStatus.RUNNING)) == {s.value for s in CLAIMABLE_STATUSES} | {
        s.value for s in WAITING_STATUSES
    }
    assert sources_of(RunStatus.EXPIRED) == ("delayed", "queued")
    assert sources_of(RunStatus.CANCELLED) == (
        "delayed",
        "queued",
        "retrying",
        "running",
        "suspended",
        "waiting_for_children",
        "waiting_for_finalize",
    )


def test_waiting_statuses() -> None:
    assert {s.value for s in WAITING_STATUSES} == {
        "suspended",
        "waiting_for_children",
        "waiting_for_finalize",
    }
    assert not (WAITING_STATUSES & TERMINAL_STATUSES)
    assert not (WAITING_STATUSES & CLAIMABLE_STATUSES)


def test_non_terminal() -> None:
    assert non_terminal() == (
        "delayed",
        "queued",
        "retrying",
        "running",
        "suspended",
        "waiting_for_children",
        "waiting_for_finalize",
    )


@pytest.mark.parametrize("value", DESIGN_VALUES)
def test_parse_status_accepts_every_value(value: str) -> None:
    parsed = parse_status(value)
    assert parsed is RunStatus(value)
    assert parsed.value == value


@pytest.mark.parametrize("value", ["finished", "", "Running", "RUNNING", "timed-out"])
def test_parse_status_rejects_unknown_name(value: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        parse_status(value)
    err = info.value
    assert err.option == "status"
    assert err.got == value
    message = str(err)
    assert "'status'" in message
    assert repr(value) in message
    for allowed in DESIGN_VALUES:
        assert allowed in message
    assert "one of: delayed, queued, running," in message
