"""Run one chaos worker process until SIGTERM (or SIGKILL).

Usage: python chaos_worker.py DATABASE_URL [APP]

APP names the module of this folder whose `build_engine(url, executions)` makes the engine
(default `chaos_app`).

Prints `ready <worker id>` once the worker has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys

from chaos_app import side_pool

from perdure import PerdureError


async def main(url: str, app: str) -> None:
    build_engine = importlib.import_module(app).build_engine
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # Only the step-counting app writes a side table (on PostgreSQL); the others need none.
    side = side_pool(url) if app == "chaos_app" else contextlib.nullcontext()
    async with side as executions:
        engine = build_engine(url, executions)
        # Started while the database is restarting? Wait for it, as a supervisor would.
        delay = 0.1
        while True:
            try:
                await engine.start()
                break
            except PerdureError as exc:
                print(f"cannot start yet ({exc}); retrying in {delay:g}s", flush=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        print(f"ready {engine.worker_id}", flush=True)
        await engine.run_worker(stop)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "chaos_app"))
