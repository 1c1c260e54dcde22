"""Run a worker for `flow_app.build_engine(url)` until SIGTERM (or SIGKILL).

Usage: python flow_worker.py DATABASE_URL [SLOTS]   (with PERDURE_TEST_MARKER_DIR set)
"""

from __future__ import annotations

import asyncio
import signal
import sys

from flow_app import SLOTS, build_engine


async def main(url: str, slots: int) -> None:
    engine = build_engine(url, slots)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await engine.start()
    print(f"worker {engine.worker_id} ready", flush=True)
    await engine.run_worker(stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else SLOTS))
