"""Trigger concurrently with the other trigger processes of a test, all at one signal.

Usage: python flow_trigger.py DATABASE_URL MODE N   (with PERDURE_TEST_MARKER_DIR set)

Connects, writes `ready-<pid>`, waits for the file `go`, then fires N triggers at once:
- MODE idempotent: N triggers of `charge` with one idempotency key; writes the run ids.
- MODE capped: N triggers of `capped` (a queue with a depth cap); writes one line per trigger,
  "ok <run id>" or "rejected <depth> <cap>".
The result goes to `result-<pid>`, written atomically.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from flow_app import IDEMPOTENCY_KEY, build_engine, marker_dir

from perdure import BackpressureError


async def main(url: str, mode: str, n: int) -> None:
    engine = build_engine(url)
    await engine.open()  # connect (and declare the queues) before the race starts
    markers = marker_dir()
    (markers / f"ready-{os.getpid()}").write_text("")
    deadline = time.monotonic() + 30
    while not (markers / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 30 s")
        await asyncio.sleep(0.002)

    async def one(i: int) -> str:
        if mode == "idempotent":
            handle = await engine.trigger("charge", 100, idempotency_key=IDEMPOTENCY_KEY)
            return handle.id
        try:
            handle = await engine.trigger("capped", i)
        except BackpressureError as exc:
            return f"rejected {exc.depth} {exc.cap}"
        return f"ok {handle.id}"

    lines = await asyncio.gather(*(one(i) for i in range(n)))
    await engine.close()
    tmp = markers / f".result-{os.getpid()}.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(markers / f"result-{os.getpid()}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
