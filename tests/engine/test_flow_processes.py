"""Flow control across real processes (issue 6's acceptance), on a SQLite file and on
PostgreSQL: queue and per-key concurrency limits, a sliding-window rate limit, idempotent
triggers and the depth cap, each exercised by several processes at once.

Worker processes run `apps/flow_worker.py` (2 slots each unless a test says otherwise, see
`flow_app.SLOTS`). Work is triggered into a paused queue and released with `resume_queue` once
every worker is up, so all processes compete from the first claim. Start and end times of
executions are read from a side file the task bodies append to (see `flow_app.record`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from perdure import Engine, RunStatus

from .apps.flow_app import CAP, IDEMPOTENCY_KEY, LIMIT, RATE, SLOTS, build_engine
from .conftest import WorkerProcesses
from .support import wait_until

pytestmark = pytest.mark.timeout(120)

WORKERS = 3


@dataclass(frozen=True)
class Execution:
    kind: str
    run_id: str
    key: str
    start: float
    end: float
    pid: int


def executions(markers: Path) -> list[Execution]:
    path = markers / "executions.log"
    lines = path.read_text().splitlines() if path.exists() else []
    found: list[Execution] = []
    for line in lines:
        kind, run_id, key, start, end, pid = line.split()
        found.append(Execution(kind, run_id, key, float(start), float(end), int(pid)))
    return found


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at t comes before a start at t)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


async def start_workers(workers: WorkerProcesses, n: int = WORKERS, slots: int = SLOTS) -> None:
    for _ in range(n):
        workers.start("flow_worker.py", str(slots))
    await wait_until(
        lambda: workers.logs().count(" ready\n") == n,
        timeout=30,
        what=f"{n} worker processes to start",
    )


async def wait_finished(client: Engine, task_id: str, n: int, timeout: float = 60) -> None:
    async def done() -> bool:
        page = await client.list_runs(task_id=task_id, status="completed", limit=1000)
        return len(page.runs) == n

    await wait_until(done, timeout=timeout, what=f"{n} runs of {task_id!r} to complete")


async def test_queue_concurrency_limit_holds_across_three_worker_processes(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url)  # triggers and reads; runs no worker
    try:
        await client.pause_queue("limited")
        await client.get_task("tracked").batch_trigger(list(range(200)))
        await start_workers(worker_processes)
        await client.resume_queue("limited")
        await wait_finished(client, "tracked", 200)
    finally:
        await client.close()

    runs = [e for e in executions(worker_processes.markers) if e.kind == "tracked"]
    assert len(runs) == 200
    assert len({e.run_id for e in runs}) == 200  # each run executed once
    assert max_overlap([(e.start, e.end) for e in runs]) == LIMIT  # reached, never passed
    assert len({e.pid for e in runs}) >= 2  # the limit was shared by several processes


async def test_per_key_limit_across_processes_never_overlaps_a_key_and_serves_every_key(
    worker_processes: WorkerProcesses,
) -> None:
    keys = [f"user-{i}" for i in range(5)]
    client = build_engine(worker_processes.url)
    try:
        await client.pause_queue("keyed")
        per_key = client.get_task("per_key")
        for key in keys:  # key by key: user-0's runs are all queued before user-1's, ...
            await per_key.batch_trigger([key] * 20, concurrency_key=key)
        # One slot per process: 3 slots for 5 keys, so the keys must take turns.
        await start_workers(worker_processes, slots=1)
        await client.resume_queue("keyed")
        await wait_finished(client, "per_key", 100)
    finally:
        await client.close()

    runs = sorted(
        (e for e in executions(worker_processes.markers) if e.kind == "per_key"),
        key=lambda e: e.start,
    )
    assert len(runs) == 100
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for e in runs:
        by_key[e.key].append(e)
    assert sorted(by_key) == keys
    for key, key_runs in by_key.items():
        assert len(key_runs) == 20
        assert max_overlap([(e.start, e.end) for e in key_runs]) == 1, key
    # Fair across keys: the keys queued first did not hold the others back.
    assert len({e.key for e in runs[:5]}) >= 3
    first_half = [e.key for e in runs[:50]]
    assert all(first_half.count(key) >= 5 for key in keys), first_half
    assert max_overlap([(e.start, e.end) for e in runs]) > 1  # keys did run side by side


async def test_rate_limit_across_processes_never_exceeds_its_window(
    worker_processes: WorkerProcesses,
) -> None:
    total = 4 * RATE.limit  # four windows: 1,000 runs at 50/s would take 20 s per backend
    client = build_engine(worker_processes.url)
    try:
        await client.pause_queue("rated")
        await client.get_task("rated").batch_trigger(list(range(total)))
        # Enough slots that the rate limit, not the workers, is what holds starts back.
        await start_workers(worker_processes, slots=RATE.limit)
        await client.resume_queue("rated")
        await wait_finished(client, "rated", total, timeout=total / RATE.limit * RATE.per + 30)
        page = await client.list_runs(task_id="rated", limit=1000)
    finally:
        await client.close()

    assert len(page.runs) == total
    assert all(run.status is RunStatus.COMPLETED for run in page.runs)  # waited, not dropped
    starts = sorted(run.started_at.timestamp() for run in page.runs if run.started_at)
    assert len(starts) == total
    # Every window [s, s + per) that begins at a start; 1 µs of slack for datetime rounding.
    busiest = max(
        sum(1 for t in starts[i:] if t - s < RATE.per - 1e-6) for i, s in enumerate(starts)
    )
    assert busiest == RATE.limit  # reached, never exceeded


async def start_triggerers(workers: WorkerProcesses, mode: str, n_procs: int, each: int) -> None:
    """Start trigger processes, release them at once, and wait for all their results."""
    procs = [workers.start("flow_trigger.py", mode, str(each)) for _ in range(n_procs)]
    markers = workers.markers
    await wait_until(
        lambda: len(list(markers.glob("ready-*"))) == n_procs,
        timeout=30,
        what=f"{n_procs} trigger processes to connect",
    )
    (markers / "go").write_text("")
    await wait_until(
        lambda: len(list(markers.glob("result-*"))) == n_procs,
        timeout=30,
        what=f"{n_procs} trigger processes to finish",
    )
    for proc in procs:
        assert proc.wait(timeout=10) == 0, workers.logs()


def results(markers: Path) -> list[str]:
    return [line for path in markers.glob("result-*") for line in path.read_text().splitlines()]


async def test_concurrent_idempotent_triggers_from_five_processes_create_one_run(
    worker_processes: WorkerProcesses,
) -> None:
    await start_triggerers(worker_processes, "idempotent", n_procs=5, each=10)
    run_ids = results(worker_processes.markers)
    assert len(run_ids) == 50
    assert len(set(run_ids)) == 1

    client = build_engine(worker_processes.url)
    try:
        page = await client.list_runs(task_id="charge", limit=100)
    finally:
        await client.close()
    assert [run.id for run in page.runs] == run_ids[:1]
    assert page.runs[0].idempotency_key == IDEMPOTENCY_KEY


async def test_depth_cap_holds_against_concurrent_triggers_from_five_processes(
    worker_processes: WorkerProcesses,
) -> None:
    client = build_engine(worker_processes.url)
    try:
        await client.get_task("capped").batch_trigger(list(range(CAP - 30)))
        await start_triggerers(worker_processes, "capped", n_procs=5, each=10)
        page = await client.list_runs(task_id="capped", limit=1000)
    finally:
        await client.close()

    lines = results(worker_processes.markers)
    accepted = [line.split()[1] for line in lines if line.startswith("ok ")]
    rejected = [line.split()[1:] for line in lines if line.startswith("rejected ")]
    assert (len(accepted), len(rejected)) == (30, 20)
    # Each rejection saw a full queue: depth at the cap (its own trigger would pass it).
    assert all(depth_cap == [str(CAP), str(CAP)] for depth_cap in rejected)
    assert len(page.runs) == CAP
    assert set(accepted) <= {run.id for run in page.runs}
