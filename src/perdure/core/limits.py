"""Flow-control value objects: queue limits, rate limits, debounce. Pure; storage enforces
them inside its transactions and `perdure.flow` exposes them to users."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from perdure.core.errors import InvalidOptionError
from perdure.core.retry import to_seconds


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(name, "an integer >= 1 (or None for no limit)", value)
    return value


@dataclass(frozen=True, slots=True, init=False)
class RateLimit:
    """At most `limit` starts in any sliding window of `per`."""

    limit: int
    per: float

    def __init__(self, limit: int, per: float | timedelta = 1.0) -> None:
        _positive("rate_limit.limit", limit)
        seconds = to_seconds(per, "rate_limit.per")
        if seconds <= 0:
            raise InvalidOptionError("rate_limit.per", "a duration > 0", per)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "per", seconds)


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """A queue's limits; None means unlimited. They hold across all workers and processes."""

    name: str
    concurrency: int | None = None
    key_concurrency: int | None = None
    rate_limit: RateLimit | None = None
    key_rate_limit: RateLimit | None = None
    max_depth: int | None = None
    paused: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidOptionError("queue", "a non-empty queue name", self.name)
        _positive("concurrency", self.concurrency)
        _positive("key_concurrency", self.key_concurrency)
        _positive("max_depth", self.max_depth)
        for name in ("rate_limit", "key_rate_limit"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, RateLimit):
                raise InvalidOptionError(name, "a RateLimit(limit, per=...)", value)

    @property
    def limits_claims(self) -> bool:
        """Whether claiming from this queue must count running runs or recent starts."""
        return any(
            v is not None
            for v in (self.concurrency, self.key_concurrency, self.rate_limit, self.key_rate_limit)
        )


@dataclass(frozen=True, slots=True, init=False)
class Debounce:
    """Triggers with the same `key` within `window` collapse into one run, which starts once
    `window` has passed without another trigger, with the latest input."""

    key: str
    window: float

    def __init__(self, key: str, window: float | timedelta) -> None:
        if not isinstance(key, str) or not key:
            raise InvalidOptionError("debounce.key", "a non-empty string", key)
        seconds = to_seconds(window, "debounce.window")
        if seconds <= 0:
            raise InvalidOptionError("debounce.window", "a duration > 0", window)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "window", seconds)


def claim_allowance(free: int, limits: QueueLimits, running: int, recent_starts: int) -> int:
    """How many runs one claim may start from a queue: the free slots, less what the queue's
    concurrency limit and sliding-window rate limit leave."""
    allowance = free
    if limits.concurrency is not None:
        allowance = min(allowance, limits.concurrency - running)
    if limits.rate_limit is not None:
        allowance = min(allowance, limits.rate_limit.limit - recent_starts)
    return max(allowance, 0)
