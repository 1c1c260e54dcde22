"""Fixtures of the engine tier: engines on every backend, always shut down after the test.

`backend_url` comes from `tests/conftest.py` (sqlite file, memory, postgres with a fresh
database per test). Until that file provides it, the fallback below runs the tier on a SQLite
file and on `memory://`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure import Engine, ManualClock

ROOT_CONFTEST = Path(__file__).parent.parent / "conftest.py"


def _shared_backend_fixture() -> bool:
    return ROOT_CONFTEST.exists() and "def backend_url" in ROOT_CONFTEST.read_text()


if not _shared_backend_fixture():
    # TODO(backends): delete this fallback once tests/conftest.py defines `backend_url`
    # (sqlite, memory, postgres); the check above already switches to it when it appears.
    @pytest.fixture(params=["sqlite", "memory"])
    def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "memory":
            return "memory://"
        return f"sqlite:///{tmp_path / 'perdure.db'}"


def is_memory(url: str) -> bool:
    return url.startswith("memory://")


@pytest.fixture
def shared_url(backend_url: str) -> str:
    """A database other engines and processes can open too (not a private `memory://`)."""
    if is_memory(backend_url):
        pytest.skip("needs a database shared between engines (memory:// is private)")
    return backend_url


MakeEngine = Callable[..., Engine]


@pytest.fixture
async def make_engine(backend_url: str) -> AsyncIterator[MakeEngine]:
    """`make_engine(**options)` → an Engine on this test's database; `url=` picks another.
    Every engine made is shut down (with a short grace) when the test ends."""
    engines: list[Engine] = []

    def make(url: str | None = None, **options: Any) -> Engine:
        options.setdefault("poll_interval", 0.1)
        engine = Engine(url or backend_url, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in reversed(engines):
        await engine.shutdown(grace=1)


@pytest.fixture
def engine(make_engine: MakeEngine) -> Engine:
    return make_engine()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_700_000_000.0)


@pytest.fixture
def sync_engines(backend_url: str) -> Iterator[Callable[..., Engine]]:
    """Engines for plain (non-async) tests; their `_sync` machinery is closed afterwards."""
    engines: list[Engine] = []

    def make(**options: Any) -> Engine:
        options.setdefault("poll_interval", 0.1)
        engine = Engine(backend_url, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        with contextlib.suppress(Exception):
            engine.close_sync()
