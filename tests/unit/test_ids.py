"""Prefixed, time-sortable ids, monotonic within a process."""

from __future__ import annotations

import itertools
import re
import threading

import pytest

from perdure.core.ids import id_time, new_id, run_id, worker_id

ID_BODY = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}$")  # Crockford base32: no i, l, o, u

T0 = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z


def test_run_id_shape() -> None:
    value = run_id()
    prefix, _, body = value.partition("_")
    assert prefix == "run"
    assert len(value) == 30
    assert ID_BODY.match(body)


def test_worker_id_shape() -> None:
    value = worker_id()
    assert value.startswith("wkr_")
    assert len(value) == 30
    assert ID_BODY.match(value[4:])


def test_new_id_uses_the_given_prefix() -> None:
    value = new_id("tok", T0)
    assert value.startswith("tok_")
    assert len(value) == len("tok_") + 26


@pytest.mark.parametrize("now", [0.0, 0.001, 1.0, T0, 1_999_999_999.999, 4_102_444_800.5])
def test_id_time_round_trips_the_millisecond(now: float) -> None:
    assert id_time(new_id("run", now)) == int(now * 1000) / 1000


def test_id_time_truncates_to_the_millisecond() -> None:
    assert id_time(run_id(T0 + 0.0009)) == T0


def test_id_time_of_a_system_time_id_is_close_to_now() -> None:
    import time

    before = time.time()
    value = run_id()
    after = time.time()
    assert before - 0.001 <= id_time(value) <= after


def test_id_time_accepts_a_prefix_containing_underscores() -> None:
    assert id_time(new_id("dead_letter", T0)) == T0


@pytest.mark.parametrize("value", ["run", "run_", "run_abc", "_" + "0" * 26, "run_" + "u" * 26])
def test_id_time_rejects_what_is_not_an_id(value: str) -> None:
    with pytest.raises(ValueError, match="is not a perdure id"):
        id_time(value)


def test_ids_made_with_increasing_now_sort_increasingly() -> None:
    millis = [*range(1_700_000_000_000, 1_700_000_002_000, 7), 1_800_000_000_000, 4_000_000_000_000]
    times = [ms / 1000 for ms in millis]
    ids = [run_id(t) for t in times]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert [id_time(i) for i in ids] == times


def test_ids_in_the_same_millisecond_are_increasing() -> None:
    ids = [run_id(T0) for _ in range(100)]
    assert sorted(ids) == ids
    assert len(set(ids)) == 100
    assert {id_time(i) for i in ids} == {T0}


def test_same_millisecond_ids_increment_the_random_part() -> None:
    first, second = run_id(T0 + 5), run_id(T0 + 5)
    assert first[:14] == second[:14]  # prefix + time part
    assert int(_decode(second[14:])) == int(_decode(first[14:])) + 1


def test_a_new_millisecond_draws_a_new_random_part() -> None:
    a = run_id(1_700_000_010_000 / 1000)
    b = run_id(1_700_000_010_001 / 1000)
    assert a[:14] < b[:14]
    assert _decode(b[14:]) != _decode(a[14:]) + 1  # fails with probability 2**-80


def test_ten_thousand_ids_in_a_tight_loop_are_strictly_increasing_and_unique() -> None:
    ids = [run_id() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == 10_000


def test_ids_from_many_threads_are_unique_and_increasing_per_thread() -> None:
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(out: list[str]) -> None:
        start.wait()
        out.extend(run_id() for _ in range(2_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out in results:
        assert all(a < b for a, b in itertools.pairwise(out))
    assert len({i for out in results for i in out}) == 16_000


def _decode(chars: str) -> int:
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    value = 0
    for ch in chars:
        value = value * 32 + alphabet.index(ch)
    return value


def _reference_body(millis: int, rand: int) -> str:
    """An id body by definition: the 130-bit number (50 bits of milliseconds, 80 random) in
    26 Crockford base32 digits, most significant first."""
    value = millis << 80 | rand
    return "".join(
        "0123456789abcdefghjkmnpqrstvwxyz"[value >> (5 * i) & 31] for i in range(25, -1, -1)
    )


@pytest.mark.parametrize(
    ("millis", "rand"),
    [
        (0, 0),
        (2**50 - 1, 2**80 - 1),
        (1_700_000_000_123, 1),
        (1_700_000_000_123, 2**40),
        (1_700_000_000_123, 2**40 - 1),
        (4_102_444_800_500, 0x0123456789ABCDEF0123),
        (1, 2**79),
    ],
)
def test_an_id_body_is_its_time_and_random_part_in_base32(millis: int, rand: int) -> None:
    from perdure.core.ids import _encode  # pyright: ignore[reportPrivateUsage]

    assert _encode(millis, rand) == _reference_body(millis, rand)
