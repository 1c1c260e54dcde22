"""Run a worker for `worker_app.build_engine(url)` until SIGTERM (or SIGKILL).

Usage: python run_worker.py DATABASE_URL [OPTIONS_JSON]   (with PERDURE_TEST_MARKER_DIR set)
OPTIONS_JSON: Engine keyword options overriding `build_engine`'s defaults.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from worker_app import build_engine


async def main(url: str, options: dict[str, Any]) -> None:
    engine = build_engine(url, **options)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await engine.start()
    print(f"worker {engine.worker_id} ready", flush=True)
    await engine.run_worker(stop)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
