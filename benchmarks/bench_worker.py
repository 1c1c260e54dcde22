"""A benchmark worker process, driven by `drain.py` over stdin/stdout.

It connects (migrations applied), prints `ready`, starts claiming when it reads a line
(`go`), prints `started`, and shuts down when stdin reaches end of file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench_tasks import make_engine

from perdure.cli.main import freeze_startup_heap


async def serve(url: str, concurrency: int, poll_interval: float | None) -> None:
    engine, _ = make_engine(url, concurrency=concurrency, poll_interval=poll_interval)
    loop = asyncio.get_running_loop()
    await engine.open()
    print("ready", flush=True)
    if not await loop.run_in_executor(None, sys.stdin.readline):
        await engine.close()
        return
    freeze_startup_heap()  # as `perdure worker` does before it starts claiming
    await engine.start()
    print("started", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # returns "" at end of file
    await engine.shutdown(grace=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.concurrency, args.poll_interval))


if __name__ == "__main__":
    main()
