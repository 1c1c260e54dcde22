"""The worker's circuit breaker (engine/breaker.py) as a state machine, on an injected clock."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from perdure import StorageError
from perdure.engine.breaker import BreakerState, CircuitBreaker, describe

LOGGER = "perdure.test.breaker"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        min_delay=0.1, max_delay=5.0, clock=clock, logger=logging.getLogger(LOGGER)
    )


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


DOWN = StorageError("PostgreSQL query 'claim_runs' failed: connection refused\n\tIs it up?")


def test_a_new_breaker_is_closed_and_lets_calls_through(breaker: CircuitBreaker) -> None:
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.is_open
    assert breaker.wait_time() == 0.0
    assert breaker.closed_at is None


def test_a_failure_opens_it_and_logs_one_warning(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    assert breaker.record_failure(DOWN) == pytest.approx(0.1)
    assert breaker.is_open
    assert breaker.wait_time() == pytest.approx(0.1)
    assert lines(caplog) == [
        (
            "WARNING",
            "database unreachable (PostgreSQL query 'claim_runs' failed: connection refused "
            "Is it up?); pausing claims, retrying every 0.1 s, backing off to every 5 s",
        )
    ]


def test_retries_back_off_exponentially_up_to_the_cap(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    waits = [breaker.record_failure(DOWN)]
    for _ in range(9):
        clock.advance(waits[-1])  # each retry happens at the retry time, and fails
        waits.append(breaker.record_failure(DOWN))
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0])
    assert breaker.openings == 1
    assert len(lines(caplog)) == 1  # however many retries failed


def test_callers_failing_before_the_retry_time_share_it_instead_of_backing_off(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Four loops failing at once (claim, maintenance, flusher, heartbeat) wait for one
    retry time; the backoff doubles per failed retry, not per caller."""
    assert breaker.record_failure(DOWN) == pytest.approx(0.1)
    clock.advance(0.03)
    assert breaker.record_failure(DOWN) == pytest.approx(0.07)
    assert breaker.record_failure(DOWN) == pytest.approx(0.07)
    clock.advance(0.07)
    assert breaker.record_failure(DOWN) == pytest.approx(0.2)  # the retry failed: doubled
    clock.advance(0.05)
    assert breaker.wait_time() == pytest.approx(0.15)


def test_a_success_closes_it_and_logs_the_outage_once(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    wait = breaker.record_failure(DOWN)
    for _ in range(5):
        clock.advance(wait)
        wait = breaker.record_failure(DOWN)
    clock.advance(wait)
    breaker.record_success()
    breaker.record_success()  # further successes say nothing
    assert breaker.state is BreakerState.CLOSED
    assert breaker.wait_time() == 0.0
    assert breaker.closed_at == clock.now
    assert breaker.last_outage == pytest.approx(6.3)  # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2
    assert lines(caplog)[1:] == [("INFO", "database reachable again after 6.3 s")]


def test_after_closing_a_new_outage_starts_again_from_the_shortest_wait(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    wait = breaker.record_failure(DOWN)
    for _ in range(8):
        clock.advance(wait)
        wait = breaker.record_failure(DOWN)
    breaker.record_success()
    clock.advance(60)
    assert breaker.record_failure(DOWN) == pytest.approx(0.1)
    assert breaker.openings == 2
    assert [level for level, _ in lines(caplog)] == ["WARNING", "INFO", "WARNING"]


def test_successes_while_closed_log_nothing_and_track_the_last_success(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock.advance(3)
    breaker.record_success()
    assert breaker.last_success == clock.now
    assert lines(caplog) == []


def test_the_wait_ends_at_the_retry_time(breaker: CircuitBreaker, clock: FakeClock) -> None:
    breaker.record_failure(DOWN)
    clock.advance(0.5)
    assert breaker.is_open  # still open: only a success closes it
    assert breaker.wait_time() == 0.0  # but callers may try now


async def test_wait_returns_at_once_when_closed(breaker: CircuitBreaker) -> None:
    await breaker.wait()  # would hang the test (timeout) if it slept


def test_it_is_safe_to_use_from_several_threads(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    breaker = CircuitBreaker(clock=clock, logger=logging.getLogger(LOGGER))

    def hammer() -> None:
        for _ in range(500):
            breaker.record_failure(DOWN)
            breaker.record_success()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert breaker.state is BreakerState.CLOSED
    # Every opening logged one warning and was closed by exactly one success, logged once.
    levels = [level for level, _ in lines(caplog)]
    assert breaker.openings >= 1
    assert levels.count("WARNING") == levels.count("INFO") == breaker.openings


def test_invalid_delays_are_rejected() -> None:
    with pytest.raises(ValueError, match="min_delay"):
        CircuitBreaker(min_delay=0)
    with pytest.raises(ValueError, match="min_delay"):
        CircuitBreaker(min_delay=6, max_delay=5)


def test_describe_makes_one_short_line() -> None:
    assert describe(StorageError("a\n\tb   c")) == "a b c"
    assert describe(StorageError("")) == "StorageError"
    long = describe(StorageError("x" * 1000))
    assert len(long) == 300
    assert long.endswith("…")


async def test_closing_wakes_callers_waiting_for_the_retry_time(clock: FakeClock) -> None:
    """A success, even on another thread (the heartbeat's), ends every wait at once."""
    breaker = CircuitBreaker(min_delay=30, max_delay=60, clock=clock)
    breaker.record_failure(DOWN)
    waiters = [asyncio.create_task(breaker.wait()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    closer = threading.Thread(target=breaker.record_success)
    closer.start()
    closer.join()
    async with asyncio.timeout(5):  # instead of the 30 s retry wait
        await asyncio.gather(*waiters)


async def test_wait_sleeps_until_the_retry_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(min_delay=0.05, max_delay=1, clock=clock)
    breaker.record_failure(DOWN)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await breaker.wait()
    assert loop.time() - started >= 0.04
