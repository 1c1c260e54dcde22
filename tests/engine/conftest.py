"""Fixtures of the engine tier: engines on every backend, always shut down after the test.

`backend_url` comes from `tests/conftest.py`: a SQLite file, `memory://`, and PostgreSQL with
a fresh database per test. Tests that need a second engine or process on the same database
take `shared_url`, which skips `memory://`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perdure import Engine, ManualClock


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
        engine.close_sync()


APPS = Path(__file__).parent / "apps"


class WorkerProcesses:
    """Subprocesses on a shared database: workers of `apps/worker_app.py` by default, or any
    script under `apps/`."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self._tmp = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    def start(self, script: str = "run_worker.py", *args: str) -> subprocess.Popen[bytes]:
        """Start `apps/<script> URL ARGS...` (by default a worker of `worker_app.py`)."""
        log_path = self._tmp / f"worker-{len(self.procs)}.log"
        self._logs.append(log_path)
        env = {**os.environ, "PERDURE_TEST_MARKER_DIR": str(self.markers)}
        env.pop("PERDURE_DATABASE_URL", None)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(APPS / script), self.url, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmp,
            )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self._logs)

    def starts(self, run_id: str) -> list[tuple[int, int]]:
        """(attempt, pid) of every execution of the run that started, in order."""
        path = self.markers / f"{run_id}.starts"
        if not path.exists():
            return []
        # Only whole lines: the worker may be appending one right now.
        lines = path.read_text().split("\n")[:-1]
        return [(int(a), int(pid)) for a, pid in (line.split() for line in lines)]

    def started(self, run_id: str, attempt: int) -> bool:
        return any(a == attempt for a, _ in self.starts(run_id))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def worker_processes(shared_url: str, tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Start worker subprocesses with `.start()`; all are killed when the test ends (their
    output is printed then, and shown by pytest if the test failed)."""
    workers = WorkerProcesses(shared_url, tmp_path)
    try:
        yield workers
    finally:
        workers.kill_all()
        print(workers.logs())
