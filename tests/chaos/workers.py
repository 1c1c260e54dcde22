"""Chaos worker processes (apps/chaos_worker.py) the chaos tests start, kill and replace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

WORKER_SCRIPT = Path(__file__).parent / "apps" / "chaos_worker.py"
STARTUP = 30.0  # seconds a worker process may take to start


@dataclass
class ChaosWorkers:
    """The worker processes; each prints `ready <worker id>` once it has started."""

    url: str
    logs: Path
    app: str = "chaos_app"  # the module of tests/chaos/apps whose `build_engine` they run
    env: dict[str, str] = field(default_factory=dict[str, str])  # added to their environment
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # pid -> worker id
    killed: set[int] = field(default_factory=set)  # pids we killed

    def start(self) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT), self.url, self.app],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )
        self.procs.append(proc)
        return proc

    def _log(self, index: int) -> str:
        return (self.logs / f"worker-{index}.log").read_text(errors="replace")

    def worker_id(self, proc: subprocess.Popen[bytes]) -> str | None:
        if proc.pid not in self.ids:
            for line in self._log(self.procs.index(proc)).splitlines():
                if line.startswith("ready "):
                    self.ids[proc.pid] = line.split()[1]
        return self.ids.get(proc.pid)

    def wait_ready(self, procs: list[subprocess.Popen[bytes]]) -> None:
        deadline = time.monotonic() + STARTUP
        while not all(self.worker_id(p) for p in procs):
            exited = [p.pid for p in procs if p.poll() is not None]
            assert not exited, f"worker processes {exited} exited at startup:\n{self.tail()}"
            assert time.monotonic() < deadline, f"workers did not start:\n{self.tail()}"
            time.sleep(0.05)

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.killed.add(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def unexpected_exits(self) -> list[tuple[int, int | None]]:
        return [
            (p.pid, p.poll())
            for p in self.procs
            if p.poll() is not None and p.pid not in self.killed
        ]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- worker-{i} (pid {p.pid}, exit {p.poll()})\n"
            + "\n".join(self._log(i).splitlines()[-lines:])
            for i, p in enumerate(self.procs)
        )

    def stop_all(self) -> None:
        for proc in self.alive():
            proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql.encode(), params).fetchall()


Query = Callable[[str, str], list[tuple[Any, ...]]]


def assert_every_run_completed_once(query: Query, url: str, runs: int) -> None:
    """Every one of the `runs` runs is `completed`, with exactly one `completed` event."""
    statuses = dict(query(url, "SELECT status, count(*) FROM perdure_runs GROUP BY status"))
    assert statuses == {"completed": runs}
    completions = query(
        url,
        "SELECT r.id, count(e.run_id) FROM perdure_runs AS r LEFT JOIN perdure_events AS e "
        "ON e.run_id = r.id AND e.type = 'completed' GROUP BY r.id HAVING count(e.run_id) <> 1",
    )
    assert completions == [], f"runs not completed exactly once: {completions[:10]}"
