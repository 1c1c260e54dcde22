"""RetryPolicy: validation, delay math with and without jitter, the retry decision."""

from __future__ import annotations

import dataclasses
import math
import pickle
from datetime import timedelta
from typing import Any

import pytest

from perdure.core.errors import InvalidOptionError
from perdure.core.retry import NO_RETRY, RetryPolicy, to_seconds


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.multiplier) == (3, 1.0, 2.0)
    assert (policy.max_delay, policy.jitter) == (60.0, 0.0)


def test_no_retry_policy_allows_one_attempt() -> None:
    assert NO_RETRY.max_attempts == 1
    assert NO_RETRY.should_retry(1, retryable=True) is False


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.5), (2, 1.5), (3, 4.5), (4, 13.5), (5, 20.0), (6, 20.0), (50, 20.0)],
)
def test_delay_grows_by_multiplier_and_caps_at_max_delay(attempt: int, expected: float) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, multiplier=3, max_delay=20)
    assert policy.delay(attempt) == pytest.approx(expected)


def test_delay_for_attempt_zero_or_less_is_the_base_delay() -> None:
    policy = RetryPolicy(base_delay=2.0, multiplier=2.0)
    assert policy.delay(0) == 2.0
    assert policy.delay(-3) == 2.0


def test_multiplier_one_gives_a_constant_delay() -> None:
    policy = RetryPolicy(base_delay=1.5, multiplier=1, max_delay=100)
    assert [policy.delay(n) for n in range(1, 6)] == [1.5] * 5


def test_max_delay_below_base_delay_caps_the_first_delay() -> None:
    assert RetryPolicy(base_delay=10, max_delay=3).delay(1) == 3.0


def test_zero_base_delay_retries_at_once() -> None:
    assert RetryPolicy(base_delay=0, multiplier=10).delay(1000) == 0.0


def test_huge_attempt_number_is_capped_without_overflow() -> None:
    policy = RetryPolicy(base_delay=0.1, multiplier=2.0, max_delay=30.0)
    assert policy.delay(5_000) == 30.0
    assert policy.delay(10**6) == 30.0


def test_delay_without_jitter_ignores_rand() -> None:
    policy = RetryPolicy(base_delay=4.0, jitter=0)
    assert policy.delay(1, rand=0.0) == 4.0
    assert policy.delay(1, rand=0.99) == 4.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 8.0), (0.5, 6.0), (1.0, 4.0)])
def test_jitter_scales_by_injected_rand(rand: float, expected: float) -> None:
    # delay(2) = 4 * 2 = 8 seconds, scaled by 1 - jitter * rand with jitter 0.5.
    policy = RetryPolicy(base_delay=4.0, multiplier=2.0, jitter=0.5)
    assert policy.delay(2, rand=rand) == pytest.approx(expected)


def test_jitter_applies_after_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, multiplier=10.0, max_delay=5.0, jitter=0.2)
    assert policy.delay(4, rand=1.0) == pytest.approx(4.0)


def test_full_jitter_can_reach_zero() -> None:
    assert RetryPolicy(base_delay=3.0, jitter=1.0).delay(1, rand=1.0) == 0.0


def test_rand_outside_unit_interval_is_clamped() -> None:
    policy = RetryPolicy(base_delay=10.0, jitter=0.5)
    assert policy.delay(1, rand=7.0) == pytest.approx(5.0)
    assert policy.delay(1, rand=-1.0) == pytest.approx(10.0)


def test_random_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(base_delay=10.0, multiplier=1.0, jitter=0.3)
    delays = [policy.delay(1) for _ in range(500)]
    assert all(7.0 <= d <= 10.0 for d in delays)
    assert len(set(delays)) > 1  # actually random


@pytest.mark.parametrize(
    ("failed", "retryable", "expected"),
    [
        (1, True, True),
        (2, True, True),
        (3, True, False),
        (4, True, False),
        (1, False, False),
        (2, False, False),
    ],
)
def test_should_retry(failed: int, retryable: bool, expected: bool) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(failed, retryable=retryable) is expected


def test_timedelta_is_accepted_for_delays() -> None:
    policy = RetryPolicy(base_delay=timedelta(milliseconds=250), max_delay=timedelta(minutes=2))
    assert policy.base_delay == 0.25
    assert policy.max_delay == 120.0
    assert isinstance(policy.base_delay, float)
    assert policy.delay(3) == pytest.approx(1.0)


def test_integer_delays_are_stored_as_floats() -> None:
    policy = RetryPolicy(base_delay=2, max_delay=9, multiplier=3, jitter=0)
    values = (policy.base_delay, policy.max_delay, policy.multiplier, policy.jitter)
    assert all(type(v) is float for v in values)
    assert policy == RetryPolicy(base_delay=2.0, max_delay=9.0, multiplier=3.0)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"base_delay": -0.1}, "base_delay"),
        ({"base_delay": timedelta(seconds=-1)}, "base_delay"),
        ({"base_delay": math.nan}, "base_delay"),
        ({"base_delay": math.inf}, "base_delay"),
        ({"base_delay": True}, "base_delay"),
        ({"base_delay": "1"}, "base_delay"),
        ({"max_delay": -5}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"max_delay": False}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"multiplier": 0}, "multiplier"),
        ({"multiplier": math.nan}, "multiplier"),
        ({"multiplier": True}, "multiplier"),
        ({"multiplier": "2"}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": math.nan}, "jitter"),
        ({"jitter": True}, "jitter"),
    ],
)
def test_invalid_values_raise_naming_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(InvalidOptionError) as info:
        RetryPolicy(**kwargs)
    assert info.value.option == option
    assert f"'{option}'" in str(info.value)
    assert repr(kwargs[option]) in str(info.value)


def test_invalid_option_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_boundary_values_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=1, base_delay=0, multiplier=1, max_delay=0, jitter=1)
    assert policy.delay(7, rand=0.3) == 0.0
    assert RetryPolicy(jitter=0).jitter == 0.0


def test_policy_is_frozen() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 10  # type: ignore[misc]
    assert policy.max_attempts == 3


def test_policy_is_a_hashable_value() -> None:
    a = RetryPolicy(max_attempts=5, base_delay=0.1)
    b = RetryPolicy(max_attempts=5, base_delay=timedelta(milliseconds=100))
    assert a == b
    assert hash(a) == hash(b)
    assert a != RetryPolicy(max_attempts=6, base_delay=0.1)
    assert "max_attempts=5" in repr(a)


def test_replace_revalidates() -> None:
    policy = dataclasses.replace(RetryPolicy(), max_attempts=7)
    assert policy.max_attempts == 7
    assert policy.base_delay == 1.0
    with pytest.raises(InvalidOptionError, match="jitter"):
        dataclasses.replace(policy, jitter=2)


def test_policy_pickles() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=0.2, jitter=0.1)
    assert pickle.loads(pickle.dumps(policy)) == policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0.0), (1.5, 1.5), (7, 7.0), (timedelta(minutes=1, milliseconds=500), 60.5)],
)
def test_to_seconds(value: float | timedelta, expected: float) -> None:
    result = to_seconds(value, "lease")
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize("value", [-1, timedelta(seconds=-1), math.nan, True, "5", None])
def test_to_seconds_rejects_naming_the_option(value: Any) -> None:
    with pytest.raises(InvalidOptionError) as info:
        to_seconds(value, "lease")
    assert info.value.option == "lease"
    assert "'lease'" in str(info.value)
