"""The perdure demo (`make demo`): retries, a timeout, a cancellation, and crash recovery
from a worker process killed with SIGKILL. Everything is stored in `.perdure/demo.db`.

Exits non-zero if any run does not end the way the demo says it should.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from demo_tasks import (
    DATABASE_PATH,
    DATABASE_URL,
    Report,
    crunch,
    engine,
    flaky_upload,
    long_export,
    slow_query,
)
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perdure import Run, RunHandle, RunStatus

ROOT = Path(__file__).resolve().parent.parent
LEASE = 2.0  # seconds: short, so the killed worker's run is recovered quickly
# Piped (as under `make`), rich would wrap at 80 columns; give the table room instead.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def step(number: int, title: str, text: str) -> None:
    console.print(Text.assemble((f"{number}. {title}", "bold cyan"), "  ", text))


def note(text: str) -> None:
    console.print(Text("   " + text, style="dim"))


async def wait_for_status(handle: RunHandle[Any], status: RunStatus, timeout: float) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run = await handle.get()
        if run.status is status:
            return run
        if run.status.is_terminal or time.monotonic() > deadline:
            raise RuntimeError(f"run {run.id} is {run.status.value}, expected {status.value}")
        await asyncio.sleep(0.02)


def start_worker(number: int) -> subprocess.Popen[bytes]:
    """`perdure worker` in its own process, on the same SQLite file."""
    log = (ROOT / ".perdure" / f"demo-worker-{number}.log").open("wb")
    command = [
        sys.executable, "-m", "perdure", "worker", "examples.demo_tasks:engine",
        "--queues", "batch", "--lease", str(LEASE), "--heartbeat", "0.5",
        "--poll-interval", "0.2", "--shutdown-grace", "5",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


async def in_process_runs() -> list[Run]:
    """Retries, a timeout and a cancellation, with a worker inside this process."""
    async with engine:
        flaky = await flaky_upload.trigger(Report(name="q3.csv", rows=10))
        slow = await slow_query.trigger(Report(name="audit", rows=1))
        export = await long_export.trigger(Report(name="archive", rows=1_000))

        step(1, "retries", "flaky-upload raises ConnectionError on attempts 1 and 2")
        flaky_run = await flaky.wait(timeout=20)
        note(f"-> {flaky_run.status.value} on attempt {flaky_run.attempt}: {flaky_run.output}")

        step(2, "timeout", "slow-query sleeps 5 s under a 0.5 s timeout")
        slow_run = await slow.wait(timeout=20)
        note(f"-> {slow_run.status.value}: {slow_run.error.message if slow_run.error else ''}")

        step(3, "cancel", "long-export is cancelled while it runs")
        await wait_for_status(export, RunStatus.RUNNING, timeout=10)
        await asyncio.sleep(0.3)
        await export.cancel("no longer needed")
        export_run = await export.wait(timeout=20)
        note(f"-> {export_run.status.value} after {export_run.attempt} attempt")
        return [flaky_run, slow_run, export_run]


async def crash_recovery() -> tuple[Run, int, int]:
    """A worker process dies with SIGKILL mid-run; a second worker finishes the run."""
    handle = await crunch.trigger(Report(name="ledger", rows=40))
    step(4, "crash", "crunch (2 s of work) runs in a worker process, which is killed mid-run")
    first = start_worker(1)
    second: subprocess.Popen[bytes] | None = None
    try:
        run = await wait_for_status(handle, RunStatus.RUNNING, timeout=20)
        await asyncio.sleep(0.7)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        note(f"-> SIGKILLed worker 1 (pid {first.pid}) holding attempt {run.attempt}")
        second = start_worker(2)
        note(f"-> started worker 2 (pid {second.pid}); it recovers the run once the dead "
             f"worker's {LEASE:g} s lease expires")  # fmt: skip
        finished = await handle.wait(timeout=30)
        note(f"-> {finished.status.value} on attempt {finished.attempt}: {finished.output}")
        second.send_signal(signal.SIGTERM)  # graceful: finish or release, then exit 0
        second_exit = second.wait(timeout=20)
        return finished, first.returncode, second_exit
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def summary(runs: list[Run]) -> Table:
    table = Table(title="runs in .perdure/demo.db", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("output / error", max_width=44, no_wrap=True, overflow="ellipsis")
    colors = {RunStatus.COMPLETED: "green", RunStatus.CANCELLED: "magenta"}
    for run in runs:
        if run.error is not None and run.status is not RunStatus.COMPLETED:
            result = f"{run.error.type}: {run.error.message}"
        else:
            result = str(run.output)
        table.add_row(
            Text(run.id),
            Text(run.task_id),
            Text(run.status.value, style=colors.get(run.status, "red")),
            Text(str(run.attempt)),
            Text(result),
        )
    return table


EXPLANATION = [
    "flaky-upload failed twice; its RetryPolicy (3 attempts, 0.1 s backoff) retried it and "
    "the third attempt completed. Each failure is recorded in the run's history.",
    "slow-query hit its 0.5 s timeout: the attempt was cancelled and the run ended timed_out "
    "(timeouts are not retried).",
    "long-export was cancelled while it ran: its coroutine was cancelled, and no later "
    "outcome can overwrite the cancelled status.",
    "crunch's worker process was killed with SIGKILL. Nothing was lost: the run stayed leased "
    f"in the database until the {LEASE:g} s lease expired; then the other worker recorded "
    "lease_lost, claimed the run and completed it on attempt 2.",
]


def cli_command() -> str:
    """How to call the CLI from here: the venv's script when the venv is not activated."""
    script = Path(sys.executable).with_name("perdure")
    return os.path.relpath(script) if script.exists() else "perdure"


def remove_database() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DATABASE_PATH}{suffix}").unlink(missing_ok=True)


async def main() -> int:
    console.print(Text(f"perdure demo, database {DATABASE_URL}\n", style="bold"))
    started = time.monotonic()
    runs = await in_process_runs()
    crunched, first_exit, second_exit = await crash_recovery()
    runs.append(crunched)
    events = await engine.events(crunched.id)
    await engine.close()

    console.print()
    console.print(summary(runs))
    history = " -> ".join(event.type for event in events)
    console.print(Text.assemble(("crunch history: ", "bold"), history))
    console.print(Text("\nWhat happened", style="bold"))
    for line in EXPLANATION:
        console.print(Text(f" - {line}"))
    console.print(
        f"\nInspect it: {cli_command()} --database-url {DATABASE_URL} runs show {crunched.id}",
        soft_wrap=True,
    )

    expected = [
        (runs[0], RunStatus.COMPLETED, 3),
        (runs[1], RunStatus.TIMED_OUT, 1),
        (runs[2], RunStatus.CANCELLED, 1),
        (runs[3], RunStatus.COMPLETED, 2),
    ]
    problems = [
        f"{run.task_id}: {run.status.value} on attempt {run.attempt}, expected "
        f"{status.value} on attempt {attempt}"
        for run, status, attempt in expected
        if run.status is not status or run.attempt != attempt
    ]
    if "lease_lost" not in {event.type for event in events}:
        problems.append("crunch: no lease_lost event in its history")
    if first_exit != -signal.SIGKILL:
        problems.append(f"worker 1 exited {first_exit}, expected to be killed by SIGKILL")
    if second_exit != 0:
        problems.append(f"worker 2 exited {second_exit} after SIGTERM, expected 0")
    for problem in problems:
        console.print(Text(f"demo failed: {problem}", style="bold red"))
    if not problems:
        console.print(Text(f"\ndemo finished in {time.monotonic() - started:.1f} s", "green"))
    return 1 if problems else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    remove_database()
    sys.exit(asyncio.run(main()))
