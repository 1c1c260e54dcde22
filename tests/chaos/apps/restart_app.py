"""The app of the PostgreSQL restart test, run by `perdure worker restart_app:engine`.

The database comes from PERDURE_DATABASE_URL. Each run records one step, then works for a
while, so a restart of the database finds runs at every stage: claimed, mid-step, finished
with an outcome not yet committed.
"""

from __future__ import annotations

import asyncio

from perdure import Engine, RetryPolicy, RunContext

TASK_ID = "restart-work"
#: Inputs from here on work longer (1.2 s), to finish while the database is down.
LONG = 1000

engine = Engine()


def double(n: int) -> int:
    return 2 * n


@engine.task(id=TASK_ID, retry=RetryPolicy(max_attempts=10, base_delay=0.1, max_delay=1.0))
async def work(ctx: RunContext, n: int) -> int:
    doubled = await ctx.step("double", double, n)
    await asyncio.sleep(1.2 if n >= LONG else 0.3)
    return doubled + 1
