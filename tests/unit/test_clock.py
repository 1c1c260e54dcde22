"""Injectable clocks: tests move time instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

from perdure.core.clock import Clock, ManualClock, SystemClock, to_datetime

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_manual_clock_starts_where_told() -> None:
    assert ManualClock(T0).time() == T0
    assert ManualClock(42).time() == 42.0


def test_manual_clock_starts_at_an_aware_datetime() -> None:
    start = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert ManualClock(start).time() == 1_704_110_400.0
    offset = datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert ManualClock(offset).time() == 1_704_110_400.0


def test_manual_clock_without_start_uses_the_current_time() -> None:
    before = time.time()
    now = ManualClock().time()
    assert before <= now <= time.time()


def test_manual_clock_does_not_move_by_itself() -> None:
    clock = ManualClock(T0)
    assert [clock.time() for _ in range(3)] == [T0, T0, T0]


def test_advance_by_seconds_and_timedelta() -> None:
    clock = ManualClock(T0)
    clock.advance(1.5)
    assert clock.time() == T0 + 1.5
    clock.advance(timedelta(minutes=2))
    assert clock.time() == T0 + 121.5
    clock.advance(0)
    assert clock.time() == T0 + 121.5


def test_set_to_a_timestamp_or_datetime() -> None:
    clock = ManualClock(T0)
    clock.set(T0 + 3600)
    assert clock.time() == T0 + 3600
    clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.time() == 1_893_456_000.0
    clock.set(T0)  # moving back is allowed: tests may rewind
    assert clock.time() == T0


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(ManualClock(T0), Clock)
    assert isinstance(SystemClock(), Clock)
    assert not isinstance(object(), Clock)


def test_system_clock_reads_the_epoch_time() -> None:
    before = time.time()
    now = SystemClock().time()
    assert before <= now <= time.time()


def test_to_datetime_is_utc_aware() -> None:
    dt = to_datetime(T0 + 0.25)
    assert dt == datetime(2023, 11, 14, 22, 13, 20, 250_000, tzinfo=UTC)
    assert dt is not None
    assert dt.tzinfo is UTC
    assert dt.utcoffset() == timedelta(0)


def test_to_datetime_round_trips_manual_clock_time() -> None:
    clock = ManualClock(datetime(2025, 3, 9, 7, 30, tzinfo=UTC))
    clock.advance(timedelta(days=1, seconds=5))
    assert to_datetime(clock.time()) == datetime(2025, 3, 10, 7, 30, 5, tzinfo=UTC)


def test_to_datetime_of_none_is_none() -> None:
    assert to_datetime(None) is None
