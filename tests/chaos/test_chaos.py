"""Chaos: four worker processes drain 2,000 durable runs of three recorded steps each while
random workers are SIGKILLed (and replaced) over and over and PostgreSQL is restarted once.

What must hold afterwards, from what the database says:
- every run completed, and its history has exactly one `completed` event;
- a step whose result was committed never executed again: every execution of a step function
  is counted in a side table (its own autocommit INSERT, apps/chaos_app.py), and no execution
  of a recorded step happened in an attempt after the one that recorded it (the step in
  flight at a crash may run again, since its result was never committed);
- each run a killed worker was executing was recovered (back in the queue for any worker)
  within lease + 5 s of the kill.

The database is a private cluster (tests/chaos/pgcluster.py), so restarting it disturbs no
other test.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import psycopg
import pytest

from .apps.chaos_app import CREATE_SIDE_TABLE, LEASE, STEPS, TASK_ID, build_engine
from .pgcluster import PostgresCluster
from .workers import ChaosWorkers, assert_every_run_completed_once, query

WORKERS = 4
RUNS = 2000
KILL_EVERY = (1.0, 2.0)  # seconds between two kills, uniformly random
KILLS_BEFORE_RESTART = 3  # then PostgreSQL restarts, once those kills' runs are recovered
RESTART_DATABASE_BY = 0.8  # ... or once this fraction of the runs completed, if sooner
OUTAGE = 1.5  # seconds PostgreSQL stays down
SETTLE = 5.0  # seconds after the outage before killing again
STOP_KILLING_AT = 0.9  # fraction of runs completed after which the workers are left alone
MAX_KILLS = 12  # however slow the machine: each kill costs a process start and idle slots
RECOVERY_BOUND = LEASE + 5
DEADLINE = 180.0  # seconds for the whole drain, far above what it takes


@dataclass
class Kill:
    at: float
    worker_id: str
    in_flight: list[tuple[str, int]]  # (run id, attempt) the worker was running


def completed(url: str) -> int:
    return query(url, "SELECT count(*) FROM perdure_runs WHERE status = 'completed'")[0][0]


def running_on(url: str, worker_id: str) -> list[tuple[str, int]]:
    rows = query(
        url,
        "SELECT id, attempt FROM perdure_runs WHERE status = 'running' AND lease_owner = %s",
        (worker_id,),
    )
    return [(run_id, attempt) for run_id, attempt in rows]


def recovered_at(url: str, run_id: str, attempt: int) -> float | None:
    """When the run's lost attempt was recovered: back in the queue, claimable by any worker
    (when it starts again depends on the backlog ahead of it)."""
    rows = query(
        url,
        "SELECT min(at) FROM perdure_events WHERE run_id = %s AND type = 'lease_lost' "
        "AND (data::json ->> 'attempt')::int = %s",
        (run_id, attempt),
    )
    return rows[0][0]


def outcome_committed(url: str, run_id: str, attempt: int) -> bool:
    rows = query(
        url,
        "SELECT 1 FROM perdure_events WHERE run_id = %s "
        "AND type IN ('completed', 'attempt_failed') AND (data::json ->> 'attempt')::int = %s",
        (run_id, attempt),
    )
    return bool(rows)


def all_recovered(url: str, kills: list[Kill]) -> bool:
    """Whether every attempt the killed workers were running was recovered (or had its
    outcome committed just before the kill)."""
    pairs = [pair for kill in kills for pair in kill.in_flight]
    missing = query(
        url,
        "SELECT count(*) FROM unnest(%s::text[], %s::int[]) AS k(run_id, attempt) "
        "WHERE NOT EXISTS (SELECT 1 FROM perdure_events AS e WHERE e.run_id = k.run_id "
        "AND e.type IN ('lease_lost', 'completed', 'attempt_failed') "
        "AND (e.data::json ->> 'attempt')::int = k.attempt)",
        ([run_id for run_id, _ in pairs], [attempt for _, attempt in pairs]),
    )
    return missing[0][0] == 0


def restart_database(cluster: PostgresCluster, workers: ChaosWorkers) -> tuple[float, float]:
    """Stop PostgreSQL at once (a crash, to its clients), wait, start it; (stopped, back)."""
    stopped_at = time.time()
    cluster.stop("immediate")
    time.sleep(OUTAGE)
    assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"
    cluster.start()
    return stopped_at, time.time()


def timeline(url: str, kills: list[Kill], outage: tuple[float, float], run_id: str | None) -> str:
    """The kills, the outage and one run's history, for a failure message."""
    lines = [f"kill at {k.at:.1f}: {k.worker_id} ({len(k.in_flight)} in flight)" for k in kills]
    lines.append(f"outage from {outage[0]:.1f} to {outage[1]:.1f}")
    if run_id is not None:
        events = query(
            url,
            "SELECT seq, type, at, data FROM perdure_events WHERE run_id = %s ORDER BY seq",
            (run_id,),
        )
        lines += [f"  #{seq} {type_} at {at:.2f} {data}" for seq, type_, at, data in events]
    return "\n".join(lines)


async def prepare(url: str) -> None:
    """Migrate, create the side table, and trigger every run (one transaction)."""
    client = build_engine(url)
    try:
        await client.open()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(CREATE_SIDE_TABLE.encode())
        handles = await client.get_task(TASK_ID).batch_trigger(list(range(RUNS)))
        assert len(handles) == RUNS
    finally:
        await client.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_kills_and_a_database_restart_lose_nothing_and_rerun_no_committed_step(
    pg_cluster: PostgresCluster, cluster_url: str, workers: ChaosWorkers
) -> None:
    url = cluster_url
    seed = os.environ.get("PERDURE_CHAOS_SEED", str(time.time_ns()))
    print(f"chaos seed: {seed} (set PERDURE_CHAOS_SEED to replay the same choices)")
    rng = random.Random(seed)
    asyncio.run(prepare(url))
    workers.wait_ready([workers.start() for _ in range(WORKERS)])

    kills: list[Kill] = []
    outage: tuple[float, float] | None = None  # (stopped at, back at), wall clock
    started = time.monotonic()
    next_kill = started + rng.uniform(*KILL_EVERY)
    while (done := completed(url)) < RUNS:
        assert time.monotonic() - started < DEADLINE, (
            f"only {done} of {RUNS} runs completed after {DEADLINE}s:\n{workers.tail()}"
        )
        assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"
        if outage is None and (
            (len(kills) >= KILLS_BEFORE_RESTART and all_recovered(url, kills))
            or done >= RUNS * RESTART_DATABASE_BY
        ):
            outage = restart_database(pg_cluster, workers)
            next_kill = time.monotonic() + SETTLE + rng.uniform(*KILL_EVERY)
        elif (
            time.monotonic() >= next_kill
            and done < RUNS * STOP_KILLING_AT
            and len(kills) < MAX_KILLS
            and (outage is not None or len(kills) < KILLS_BEFORE_RESTART)
        ):
            ready = [p for p in workers.alive() if workers.worker_id(p)]
            if ready:
                victim = rng.choice(ready)
                worker_id = workers.worker_id(victim)
                assert worker_id is not None
                workers.kill(victim)
                kills.append(Kill(time.time(), worker_id, running_on(url, worker_id)))
                workers.start()  # a replacement; it joins whenever it is ready
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
        time.sleep(0.1)
    drained_in = time.monotonic() - started

    assert outage is not None, "the database was never restarted"
    assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"

    assert_every_run_completed_once(query, url, RUNS)

    # Each run recorded its three steps, each executed in the attempt that recorded it and
    # never in a later one.
    recorded = query(
        url, "SELECT name, count(*) FROM perdure_steps WHERE status = 'completed' GROUP BY name"
    )
    assert dict(recorded) == dict.fromkeys(STEPS, RUNS)
    rerun_after_commit = query(
        url,
        "SELECT s.run_id, s.name, s.attempt, e.attempt, e.pid FROM perdure_steps AS s "
        "JOIN chaos_executions AS e ON e.run_id = s.run_id AND e.step = s.name "
        "AND e.attempt > s.attempt",
    )
    assert rerun_after_commit == [], f"committed steps executed again: {rerun_after_commit[:10]}"
    unexecuted = query(
        url,
        "SELECT s.run_id, s.name FROM perdure_steps AS s WHERE NOT EXISTS (SELECT 1 FROM "
        "chaos_executions AS e WHERE e.run_id = s.run_id AND e.step = s.name "
        "AND e.attempt = s.attempt)",
    )
    assert unexecuted == [], f"recorded steps with no execution: {unexecuted[:10]}"

    # The chaos did happen: runs lost their workers.
    lost = query(url, "SELECT count(*) FROM perdure_events WHERE type = 'lease_lost'")[0][0]
    executions = query(url, "SELECT count(*) FROM chaos_executions")[0][0]
    assert lost > 0
    assert executions >= RUNS * len(STEPS)

    # Recovery time of each run a killed worker was executing. Runs whose recovery the
    # database outage could have delayed are not timed: nothing is recovered while it is down,
    # and just after it, leases that expired meanwhile are left to their reconnecting owners.
    stopped_at, back_at = outage
    assert len(kills) >= KILLS_BEFORE_RESTART, f"only {len(kills)} kills"
    timed = 0
    slow: list[str] = []
    for kill in kills:
        for run_id, attempt in kill.in_flight:
            again = recovered_at(url, run_id, attempt)
            if again is None:
                # Its outcome was committed just before the kill took the process.
                assert outcome_committed(url, run_id, attempt), run_id
                continue
            before = again < stopped_at or kill.at + RECOVERY_BOUND < stopped_at
            if before or kill.at > back_at + SETTLE:
                timed += 1
                if again - kill.at > RECOVERY_BOUND:
                    slow.append(f"{run_id} {again - kill.at:.1f}s after the kill at {kill.at:.1f}")
    assert timed >= 10, f"only {timed} recoveries timed"
    assert slow == [], (
        f"runs recovered later than {RECOVERY_BOUND}s after a kill: {slow[:5]}\n"
        + timeline(url, kills, outage, slow[0].split()[0] if slow else None)
    )
    print(
        f"chaos: {RUNS} runs drained in {drained_in:.1f}s; {len(kills)} kills "
        f"({sum(len(k.in_flight) for k in kills)} runs in flight, {timed} recoveries timed); "
        f"outage {back_at - stopped_at:.1f}s; {lost} leases lost; "
        f"{executions - RUNS * len(STEPS)} step executions repeated before their commit"
    )
