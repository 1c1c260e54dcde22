"""The worker's circuit breaker around storage: ride out a database restart or network drop.

Every background caller of the worker (claim loop, maintenance loop, outcome flusher,
heartbeat thread) reports each storage call's result here. A failure opens the breaker; while
it is open all callers wait for one shared retry time instead of hammering the database, and
the wait doubles each time a retry fails (capped exponential backoff, 0.1 s to 5 s by
default). The first success closes it. Opening logs one warning line and closing one info
line, whatever the number of callers or failed retries in between; the process never exits
because of it. Closing wakes every caller waiting for the retry time, so work resumes as soon
as one call gets through.

Thread-safe (the heartbeat reports from its own thread). Time comes from an injectable
monotonic clock, so the state machine is unit-tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("perdure.worker")

#: First wait after a failure, and the cap of the exponential backoff, in seconds.
MIN_DELAY = 0.1
MAX_DELAY = 5.0
#: Error text in the log line is cut to this many characters (drivers can be verbose).
MAX_REASON = 300


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        min_delay: float = MIN_DELAY,
        max_delay: float = MAX_DELAY,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
        log_extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError(f"need 0 < min_delay <= max_delay, got {min_delay}, {max_delay}")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._clock = clock
        self._log = logger
        self._extra = dict(log_extra or {})
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._delay = 0.0
        self._retry_at = 0.0
        self._last_success = clock()
        self._closed_at: float | None = None
        self._last_outage = 0.0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: How many times the breaker opened (for tests and metrics).
        self.openings = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is BreakerState.OPEN

    @property
    def last_success(self) -> float:
        """Clock time of the last successful call (creation time before any)."""
        return self._last_success

    @property
    def closed_at(self) -> float | None:
        """Clock time the last outage ended (the breaker closed); None before any."""
        return self._closed_at

    @property
    def last_outage(self) -> float:
        """How long the last outage lasted, in seconds (0 before any)."""
        return self._last_outage

    def record_success(self) -> None:
        with self._lock:
            now = self._clock()
            self._last_success = now
            if self._state is BreakerState.CLOSED:
                return
            self._state = BreakerState.CLOSED
            self._delay = 0.0
            self._retry_at = 0.0
            outage = now - self._opened_at
            self._closed_at = now
            self._last_outage = outage
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)
        self._log.info("database reachable again after %.1f s", outage, extra=self._extra)

    def record_failure(self, exc: BaseException) -> float:
        """Record a failed storage call; returns how long the caller should wait before its
        next try (until the shared retry time)."""
        with self._lock:
            now = self._clock()
            if self._state is BreakerState.CLOSED:
                self._state = BreakerState.OPEN
                self._opened_at = now
                self._delay = self.min_delay
                self._retry_at = now + self._delay
                self.openings += 1
                opened = True
            else:
                opened = False
                if now >= self._retry_at:
                    # A retry at (or after) the retry time failed: back off further. Callers
                    # whose calls started earlier and fail now just wait for the same time.
                    self._delay = min(self._delay * 2, self.max_delay)
                    self._retry_at = now + self._delay
            wait = self._retry_at - now
        if opened:
            self._log.warning(
                "database unreachable (%s); pausing claims, retrying every %g s, backing off "
                "to every %g s",
                describe(exc),
                self.min_delay,
                self.max_delay,
                extra=self._extra,
            )
        return wait

    def wait_time(self) -> float:
        """Seconds until callers may try again: 0 when closed or when the retry time passed."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return 0.0
            return max(0.0, self._retry_at - self._clock())

    async def wait(self) -> None:
        """Sleep until the next retry time while the breaker is open, or until it closes
        (returns at once when closed)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return
            delay = self._retry_at - self._clock()
            if delay <= 0:
                return
            self._waiters.append((loop, future))
        try:
            await asyncio.wait([future], timeout=delay)
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def describe(exc: BaseException) -> str:
    """The error as one short line: drivers put newlines and hints in their messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_REASON:
        text = text[: MAX_REASON - 1] + "…"
    return text
