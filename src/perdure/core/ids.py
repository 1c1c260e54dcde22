"""Time-sortable prefixed ids: `run_` + 10 chars of milliseconds + 16 random chars (base32).

Sorting ids sorts by creation time, which keeps the primary key index append-mostly and lets
listings page by id. Within one process ids are strictly increasing even inside one
millisecond (ULID-style monotonic): a second id in the same millisecond reuses the previous
random part plus one instead of drawing a new one. (An id made with an earlier `now`, or after
the system clock stepped back, sorts by its own time.)
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_CHARS = 10
_RANDOM_CHARS = 16
_RANDOM_BITS = _RANDOM_CHARS * 5  # 80

_lock = threading.Lock()
_last_millis = -1
_last_random = 0


def _reset_after_fork() -> None:
    # A forked child must not continue the parent's sequence: both would increment the same
    # random part and mint identical ids in the same millisecond.
    global _lock, _last_millis, _last_random
    _lock = threading.Lock()
    _last_millis = -1
    _last_random = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# Every pair of characters, indexed by the 10 bits it encodes: an id body is 13 lookups.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_TIME_MASK = (1 << (_TIME_CHARS * 5)) - 1
_HALF_MASK = (1 << (_RANDOM_BITS // 2)) - 1


def _encode(millis: int, rand: int, p: list[str] = _PAIRS) -> str:
    """The 26 characters of an id body: 10 of milliseconds, then 16 of the random part."""
    # Written out on three ints of at most 50 bits: twice as fast as a loop over one
    # 130-bit int (every run is given an id; a bulk trigger makes thousands).
    t = millis & _TIME_MASK
    hi, lo = rand >> (_RANDOM_BITS // 2), rand & _HALF_MASK
    return "".join(
        (
            p[t >> 40], p[t >> 30 & 1023], p[t >> 20 & 1023], p[t >> 10 & 1023], p[t & 1023],
            p[hi >> 30], p[hi >> 20 & 1023], p[hi >> 10 & 1023], p[hi & 1023],
            p[lo >> 30], p[lo >> 20 & 1023], p[lo >> 10 & 1023], p[lo & 1023],
        )
    )  # fmt: skip


def _draw_random() -> int:
    return int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big")


def new_id(prefix: str, now: float | None = None) -> str:
    """A new id `{prefix}_…`; `now` (epoch seconds) defaults to the system time."""
    global _last_millis, _last_random
    with _lock:
        # Read the time under the lock too, or a thread holding a stale reading would go
        # back to an earlier millisecond after another thread moved on.
        millis = int((time.time() if now is None else now) * 1000)
        if millis == _last_millis:
            rand = _last_random + 1
            if rand >> _RANDOM_BITS:  # the random part is full (odds ~2**-60): carry into time
                millis += 1
                rand = _draw_random()
        else:
            rand = _draw_random()
        _last_millis, _last_random = millis, rand
    return f"{prefix}_{_encode(millis, rand)}"


def run_id(now: float | None = None) -> str:
    return new_id("run", now)


def worker_id() -> str:
    return new_id("wkr")


def id_time(value: str) -> float:
    """The creation time (epoch seconds) encoded in an id."""
    # The body never contains "_", so the prefix may (e.g. `dead_letter_…`).
    prefix, _, body = value.rpartition("_")
    if not prefix or len(body) != _TIME_CHARS + _RANDOM_CHARS:
        raise ValueError(f"{value!r} is not a perdure id (expected prefix_ + 26 characters)")
    millis = 0
    for ch in body[:_TIME_CHARS]:
        digit = _ALPHABET.find(ch)
        if digit < 0:
            raise ValueError(f"{value!r} is not a perdure id (bad character {ch!r})")
        millis = millis * 32 + digit
    return millis / 1000
