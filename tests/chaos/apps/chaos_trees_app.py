"""The task trees of the tree chaos test (tests/chaos/test_chaos_trees.py), public API only.

Five kinds of roots, each a different path through spawns, waits, wake-ups and records:
- `chaos-tree.parent`: a parent task of `CHILDREN` children with a finalize *task* (the group
  commit of spawns, settling children, a parent completed by its finalize task's commit);
- `chaos-tree.sequence`: four steps, each a child run that waits for the one before;
- `chaos-tree.fanout`: a durable function that `batch_trigger_and_wait`s `FANOUT` children,
  then records a step;
- `chaos-tree.steps`: a durable function of three recorded steps. Each step function first
  appends (run id, step, attempt) to a side SQLite file (`EXECUTIONS_ENV` names it) in its own
  commit, so every execution is counted, even one whose result was never recorded;
- `chaos-tree.waiter`: creates a wait token, publishes its id to the side file (a step), sleeps
  long enough to suspend, then waits for the token, which the test completes from outside.

Every body works a little (a random sleep), so kills land mid-body, mid-spawn and mid-commit.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from typing import Any

from perdure import Engine, FinalizeInput, Parent, RunContext, child

try:
    from .chaos_app import RETRY, chaos_engine
except ImportError:  # loaded by apps/chaos_worker.py as a top-level module
    from chaos_app import RETRY, chaos_engine  # type: ignore[no-redef]

CHILDREN = 20
FANOUT = 10
STEPS = 4
CONCURRENCY = 8  # few slots per worker: the work lasts long enough to be killed many times
RECORDED_STEPS = ("a", "b", "c")
EXECUTIONS_ENV = "PERDURE_CHAOS_EXECUTIONS"
SUSPENDING_SLEEP = 6.0  # over 5 s, a durable sleep suspends the run (docs/durable-functions.md)
CREATE_EXECUTIONS = (
    "CREATE TABLE IF NOT EXISTS executions (run_id TEXT, step TEXT, attempt INTEGER, pid INTEGER)"
)
CREATE_TOKENS = "CREATE TABLE IF NOT EXISTS tokens (run_id TEXT, token_id TEXT)"


def open_executions(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit
    conn.execute("PRAGMA journal_mode=WAL")  # committed rows survive a SIGKILL
    conn.execute(CREATE_EXECUTIONS)
    conn.execute(CREATE_TOKENS)
    return conn


def parent_output(n: int) -> int:
    """What `chaos-tree.parent` with input `n` must end with."""
    return n + sum(n * 100 + i for i in range(CHILDREN))


def fanout_output(n: int) -> int:
    return sum(n * 100 + i for i in range(FANOUT)) + 1


async def work() -> None:
    await asyncio.sleep(random.uniform(0.05, 0.25))


def build_engine(url: str, executions: Any = None) -> Engine:
    """The engine with the tree tasks (`executions` is the other app's; unused here)."""
    engine = chaos_engine(url, CONCURRENCY)

    @engine.task(id="chaos-tree.child", retry=RETRY)
    async def child_task(ctx: RunContext, n: int) -> int:
        await work()
        return n

    @engine.task(id="chaos-tree.finalize", retry=RETRY)
    async def finalize(ctx: RunContext, data: FinalizeInput[int]) -> int:
        failed = [c.run_id for c in data.children if not c.ok]
        if failed:  # no child may fail here: the parent would end with a wrong output
            raise RuntimeError(f"children failed: {failed}")
        await work()
        return (data.output or 0) + sum(c.output or 0 for c in data.children)

    @engine.parent_task(id="chaos-tree.parent", finalize=finalize, retry=RETRY)
    async def parent(ctx: RunContext, n: int) -> Parent[int]:
        await work()
        return Parent(output=n, children=[child(child_task, n * 100 + i) for i in range(CHILDREN)])

    @engine.task(id="chaos-tree.step", retry=RETRY)
    async def step(ctx: RunContext, n: int) -> int:
        await work()
        return n + 1

    engine.sequence("chaos-tree.sequence", [step] * STEPS)

    def plus_one(total: int) -> int:
        return total + 1

    @engine.task(id="chaos-tree.fanout", retry=RETRY)
    async def fanout(ctx: RunContext, n: int) -> int:
        results = await child_task.batch_trigger_and_wait([n * 100 + i for i in range(FANOUT)])
        if not all(r.ok for r in results):
            raise RuntimeError("a child failed")
        return await ctx.step("plus_one", plus_one, sum(r.output or 0 for r in results))

    executions_path = os.environ.get(EXECUTIONS_ENV)
    side = None if executions_path is None else open_executions(executions_path)

    async def record_and_work(run_id: str, attempt: int, step: str) -> str:
        assert side is not None, f"{EXECUTIONS_ENV} is not set where steps run"
        side.execute(
            "INSERT INTO executions VALUES (?, ?, ?, ?)", (run_id, step, attempt, os.getpid())
        )
        await work()
        return f"{step}@{attempt}"

    @engine.task(id="chaos-tree.steps", retry=RETRY)
    async def steps(ctx: RunContext, n: int) -> list[str]:
        return [
            await ctx.step(name, record_and_work, ctx.run_id, ctx.attempt, name)
            for name in RECORDED_STEPS
        ]

    def publish(run_id: str, token_id: str) -> None:
        assert side is not None, f"{EXECUTIONS_ENV} is not set where steps run"
        side.execute("INSERT INTO tokens VALUES (?, ?)", (run_id, token_id))

    @engine.task(id="chaos-tree.waiter", retry=RETRY)
    async def waiter(ctx: RunContext, n: int) -> str:
        token = await ctx.create_token()
        await ctx.step("publish", publish, ctx.run_id, token.id)
        await ctx.sleep(SUSPENDING_SLEEP)
        return await ctx.wait_for_token(token, str)

    return engine
