"""Retry math: pure functions of the policy and the attempt number."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import cast

from perdure.core.errors import InvalidOptionError


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_seconds(value: float | timedelta, option: str) -> float:
    """Durations accept seconds or `timedelta`; negative values are rejected."""
    # Typed for callers, checked for everyone: values arrive from env vars and untyped code.
    raw = cast(object, value)
    seconds = raw.total_seconds() if isinstance(raw, timedelta) else raw
    if not _is_number(seconds):
        raise InvalidOptionError(option, "a number of seconds or a timedelta", value)
    number = cast(float, seconds)
    if math.isnan(number) or number < 0:
        raise InvalidOptionError(option, "a duration >= 0", value)
    return float(number)


def _finite_seconds(value: float | timedelta, option: str) -> float:
    seconds = to_seconds(value, option)
    if math.isinf(seconds):  # an infinite delay would schedule a retry that never comes
        raise InvalidOptionError(option, "a finite duration >= 0", value)
    return seconds


@dataclass(init=False, frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a failed attempt is retried.

    The delay before attempt n+1 is `base_delay * multiplier**(n-1)`, capped at `max_delay`,
    then scaled by a random factor in `[1 - jitter, 1]` so retries of many runs spread out.
    Delays accept seconds or `timedelta` and are stored as float seconds.
    """

    max_attempts: int
    base_delay: float
    multiplier: float
    max_delay: float
    jitter: float

    def __init__(
        self,
        max_attempts: int = 3,
        base_delay: float | timedelta = 1.0,
        multiplier: float = 2.0,
        max_delay: float | timedelta = 60.0,
        jitter: float = 0.0,
    ) -> None:
        attempts = cast(object, max_attempts)  # checked at run time whatever the annotation
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise InvalidOptionError("max_attempts", "an integer >= 1", max_attempts)
        if not _is_number(multiplier) or not multiplier >= 1:  # `not >=` also rejects NaN
            raise InvalidOptionError("multiplier", "a number >= 1", multiplier)
        if not _is_number(jitter) or not 0 <= jitter <= 1:
            raise InvalidOptionError("jitter", "a number between 0 and 1", jitter)
        object.__setattr__(self, "max_attempts", attempts)
        object.__setattr__(self, "base_delay", _finite_seconds(base_delay, "base_delay"))
        object.__setattr__(self, "multiplier", float(multiplier))
        object.__setattr__(self, "max_delay", _finite_seconds(max_delay, "max_delay"))
        object.__setattr__(self, "jitter", float(jitter))

    def delay(self, attempt: int, rand: float | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one.

        `rand` in `[0, 1]` replaces the random draw (for tests); it only matters with jitter.
        """
        exponent = max(attempt - 1, 0)
        if self.base_delay == 0:
            capped = 0.0
        else:
            try:
                raw = self.base_delay * self.multiplier**exponent
            except OverflowError:  # a huge attempt number: far past the cap anyway
                raw = math.inf
            capped = min(raw, self.max_delay)
        if self.jitter:
            r = random.random() if rand is None else min(max(rand, 0.0), 1.0)
            capped *= 1 - self.jitter * r
        return capped

    def should_retry(self, failed_attempts: int, *, retryable: bool) -> bool:
        """Whether a run that has now failed `failed_attempts` times gets another attempt."""
        return retryable and failed_attempts < self.max_attempts


NO_RETRY = RetryPolicy(max_attempts=1)
