"""Run a worker for `durable_app.build_engine(url, counters)` until SIGTERM (or SIGKILL).

Usage: python durable_worker.py DATABASE_URL COUNTERS_DIR
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from durable_app import build_engine


async def main(url: str, counters: str) -> None:
    engine = build_engine(url, Path(counters))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await engine.run_worker(stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
