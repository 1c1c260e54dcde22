"""Chaos on task trees and durable functions: three worker processes run parents with a
finalize task, sequences, durable fan-outs, recorded steps, and runs that sleep and wait for
tokens (apps/chaos_trees_app.py) while random workers are SIGKILLed (and replaced)
over and over: mid-body, mid-spawn, mid-commit of children's outcomes. On PostgreSQL (a private
cluster) the server also crashes and restarts once, mid-tree.

What must hold afterwards, from what the database says:
- every run completed, exactly once (one `completed` event each);
- no child was spawned twice: each parent has exactly its children, one finalize task, each
  sequence exactly its steps, each fan-out exactly its children (a spawn replayed after a
  crash must find its committed children, not make new ones);
- every root's output is what its children computed (a finalize task saw every child);
- a recorded step never ran again (every execution of a step function is counted in a side
  file): at-least-once only for the step in flight at a kill;
- every run suspended in a durable sleep woke, and got the output of the token the test
  completed from outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .apps.chaos_trees_app import (
    CHILDREN,
    EXECUTIONS_ENV,
    FANOUT,
    RECORDED_STEPS,
    STEPS,
    build_engine,
    fanout_output,
    open_executions,
    parent_output,
)
from .pgcluster import PostgresCluster
from .workers import ChaosWorkers, assert_every_run_completed_once
from .workers import query as postgres_query

WORKERS = 3
PARENTS, SEQUENCES, FANOUTS, STEP_RUNS, WAITERS = 24, 12, 12, 24, 12
ROOTS = PARENTS + SEQUENCES + FANOUTS + STEP_RUNS + WAITERS
RUNS = (
    PARENTS * (CHILDREN + 2)
    + SEQUENCES * (STEPS + 1)
    + FANOUTS * (FANOUT + 1)
    + STEP_RUNS
    + WAITERS
)
# Seconds between two kills, uniformly random. The bodies' sleeps alone make the workload
# last over 4 s (~600 bodies of 0.15 s on 24 slots) however fast the machine: 2 kills at least.
KILL_EVERY = (0.5, 1.0)
MAX_KILLS = 8
RESTART_AFTER_KILLS = 2  # PostgreSQL: crash the server once, after this many kills
OUTAGE = 1.0  # seconds it stays down
STOP_KILLING_AT = 0.9  # fraction of all runs completed after which workers are left alone
DEADLINE = 150.0  # seconds for the whole workload, far above what it takes


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of `sql` (psycopg's `%s` placeholders) on either backend."""
    if not url.startswith("sqlite:"):
        return postgres_query(url, sql, params)
    with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30) as conn:
        return conn.execute(sql.replace("%s", "?"), params or ()).fetchall()


@pytest.fixture(params=["postgres", "sqlite"])
def tree_workers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ChaosWorkers, PostgresCluster | None]]:
    """Chaos workers of the tree app, with the private cluster they use (to restart), or on a
    SQLite file shared by the worker processes (and no server)."""
    if request.param == "postgres":
        chaos: ChaosWorkers = request.getfixturevalue("workers")
        chaos.app = "chaos_trees_app"
        yield chaos, request.getfixturevalue("pg_cluster")
        return
    chaos = ChaosWorkers(f"sqlite:///{tmp_path}/chaos.db", tmp_path, "chaos_trees_app")
    try:
        yield chaos, None
    finally:
        chaos.stop_all()
        print(chaos.tail())


async def trigger_roots(url: str) -> None:
    """Migrate and trigger every root."""
    client = build_engine(url)
    try:
        await client.open()
        for task_id, count in (
            ("chaos-tree.parent", PARENTS),
            ("chaos-tree.sequence", SEQUENCES),
            ("chaos-tree.fanout", FANOUTS),
            ("chaos-tree.steps", STEP_RUNS),
            ("chaos-tree.waiter", WAITERS),
        ):
            handles = await client.get_task(task_id).batch_trigger(list(range(count)))
            assert len(handles) == count
    finally:
        await client.close()


async def complete_tokens(url: str, tokens: list[tuple[str, str]]) -> None:
    """Complete each (run id, token id) with `ok-<run id>`, as another service would."""
    client = build_engine(url)
    try:
        for run_id, token_id in tokens:
            await client.complete_token(token_id, f"ok-{run_id}")
    finally:
        await client.close()


def roots_finished(url: str) -> int:
    return query(
        url,
        "SELECT count(*) FROM perdure_runs WHERE parent_id IS NULL "
        "AND status IN ('completed', 'failed', 'cancelled', 'timed_out', 'expired', "
        "'finalize_failed')",
    )[0][0]


def completed(url: str) -> int:
    return query(url, "SELECT count(*) FROM perdure_runs WHERE status = 'completed'")[0][0]


def children_of(url: str, task_id: str) -> dict[int, dict[str, int]]:
    """Per root of `task_id` (by its input): how many children of each task it has."""
    rows = query(
        url,
        "SELECT p.input, c.task_id, count(c.id) FROM perdure_runs AS p "
        "LEFT JOIN perdure_runs AS c ON c.parent_id = p.id "
        "WHERE p.task_id = %s GROUP BY p.input, c.task_id",
        (task_id,),
    )
    found: dict[int, dict[str, int]] = {}
    for input_json, child_task, n in rows:
        found.setdefault(json.loads(input_json), {})[child_task] = n
    return found


def outputs_of(url: str, task_id: str) -> dict[int, object]:
    rows = query(url, "SELECT input, output FROM perdure_runs WHERE task_id = %s", (task_id,))
    return {json.loads(i): None if o is None else json.loads(o) for i, o in rows}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_workers_lose_no_tree_node_and_spawn_no_child_twice(
    tree_workers: tuple[ChaosWorkers, PostgresCluster | None],
) -> None:
    workers, cluster = tree_workers
    url = workers.url
    seed = os.environ.get("PERDURE_CHAOS_SEED", str(time.time_ns()))
    print(f"chaos seed: {seed} (set PERDURE_CHAOS_SEED to replay the same choices)")
    rng = random.Random(seed)
    asyncio.run(trigger_roots(url))
    executions_path = str(workers.logs / "executions.db")
    side = open_executions(executions_path)  # the test's one connection to the side file
    workers.env[EXECUTIONS_ENV] = executions_path
    workers.wait_ready([workers.start() for _ in range(WORKERS)])

    kills, restarted = 0, False
    started = time.monotonic()
    next_kill = started + rng.uniform(*KILL_EVERY)
    completed_tokens: set[str] = set()
    while (done := roots_finished(url)) < ROOTS:
        published = side.execute("SELECT run_id, token_id FROM tokens").fetchall()
        new_tokens = sorted({(r, t) for r, t in published if t not in completed_tokens})
        if new_tokens:  # a re-run publish step publishes the same token again: once is enough
            asyncio.run(complete_tokens(url, new_tokens))
            completed_tokens.update(t for _, t in new_tokens)
        assert time.monotonic() - started < DEADLINE, (
            f"only {done} of {ROOTS} roots finished after {DEADLINE}s:\n{workers.tail()}"
        )
        assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"
        if (
            time.monotonic() >= next_kill
            and kills < MAX_KILLS
            and completed(url) < RUNS * STOP_KILLING_AT
        ):
            ready = [p for p in workers.alive() if workers.worker_id(p)]
            if ready:
                workers.kill(rng.choice(ready))
                kills += 1
                workers.start()  # a replacement; it joins whenever it is ready
            next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
            if cluster is not None and not restarted and kills >= RESTART_AFTER_KILLS:
                cluster.stop("immediate")  # a crash, to its clients
                time.sleep(OUTAGE)
                assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"
                cluster.start()
                restarted = True
        time.sleep(0.1)
    finished_in = time.monotonic() - started
    assert not workers.unexpected_exits(), f"a worker exited:\n{workers.tail()}"

    assert_every_run_completed_once(query, url, RUNS)

    # Each node has exactly its children: none spawned twice, none lost.
    parents = children_of(url, "chaos-tree.parent")
    assert parents == {
        n: {"chaos-tree.child": CHILDREN, "chaos-tree.finalize": 1} for n in range(PARENTS)
    }
    sequences = children_of(url, "chaos-tree.sequence")
    assert sequences == {n: {"chaos-tree.step": STEPS} for n in range(SEQUENCES)}
    fanouts = children_of(url, "chaos-tree.fanout")
    assert fanouts == {n: {"chaos-tree.child": FANOUT} for n in range(FANOUTS)}

    # Every root ends with what its children computed.
    assert outputs_of(url, "chaos-tree.parent") == {n: parent_output(n) for n in range(PARENTS)}
    assert outputs_of(url, "chaos-tree.sequence") == {n: n + STEPS for n in range(SEQUENCES)}
    assert outputs_of(url, "chaos-tree.fanout") == {n: fanout_output(n) for n in range(FANOUTS)}

    # A recorded step never ran again: each was executed in the attempt that recorded it and
    # in no later one (the step in flight at a kill may run again: it was never recorded).
    recorded = {
        (run_id, name): attempt
        for run_id, name, attempt in query(
            url,
            "SELECT s.run_id, s.name, s.attempt FROM perdure_steps AS s JOIN perdure_runs AS r "
            "ON r.id = s.run_id WHERE r.task_id = 'chaos-tree.steps' AND s.status = 'completed'",
        )
    }
    assert len(recorded) == STEP_RUNS * len(RECORDED_STEPS)
    executions = side.execute("SELECT run_id, step, attempt FROM executions").fetchall()
    side.close()
    rerun = [e for e in executions if e[2] > recorded[(e[0], e[1])]]
    assert rerun == [], f"recorded steps executed again: {rerun[:10]}"
    ran = {(run_id, step, attempt) for run_id, step, attempt in executions}
    unexecuted = [k for k, attempt in recorded.items() if (*k, attempt) not in ran]
    assert unexecuted == [], f"recorded steps with no execution: {unexecuted[:10]}"
    outputs = {
        run_id: json.loads(output)
        for run_id, output in query(
            url, "SELECT id, output FROM perdure_runs WHERE task_id = 'chaos-tree.steps'"
        )
    }
    assert outputs == {
        run_id: [f"{name}@{recorded[(run_id, name)]}" for name in RECORDED_STEPS]
        for run_id in outputs
    }

    # Every waiter resumed from its durable sleep and got its token's output.
    waiters = query(url, "SELECT id, output FROM perdure_runs WHERE task_id = 'chaos-tree.waiter'")
    assert {run_id: json.loads(output) for run_id, output in waiters} == {
        run_id: f"ok-{run_id}" for run_id, _ in waiters
    }
    assert len(completed_tokens) == WAITERS

    # The chaos did happen: runs lost their workers.
    lost = query(url, "SELECT count(*) FROM perdure_events WHERE type = 'lease_lost'")[0][0]
    assert kills >= 2, f"only {kills} kills"
    assert restarted or cluster is None
    assert lost > 0
    print(
        f"tree chaos: {RUNS} runs in {finished_in:.1f}s; {kills} kills; {lost} leases lost"
        + ("; the server restarted once" if restarted else "")
    )
