"""Run one workload of one peer and print its result as one JSON line (the last on stdout).

    benchmarks/.peers-venv/bin/python benchmarks/peers/run.py drain dbos --url URL --workers 2
    benchmarks/.peers-venv/bin/python benchmarks/peers/run.py latency celery --redis-url URL
    benchmarks/.peers-venv/bin/python benchmarks/peers/run.py steps dbos --url URL
    benchmarks/.peers-venv/bin/python benchmarks/peers/run.py versions

Called by `benchmarks/harness.py peers` (perdure's venv), which creates and drops the scratch
database around each call and kills the call's process group at its time limit. Workloads:

- drain: spawn the worker processes (connected, not consuming), bulk-enqueue `--runs` no-op
  jobs (bulk enqueue rate), start the workers together, wait until every job ran (drain rate);
- latency: one idle worker; `--count` jobs enqueued one at a time, `--gap-ms` apart;
- steps: (DBOS) workflows of 10 no-op steps, each step call timed inside the workflow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import WorkerProcs, analyze, drain_rate, percentile, timed

PEERS = {
    "dbos": "dbos_peer",
    "procrastinate": "procrastinate_peer",
    "pgqueuer": "pgqueuer_peer",
    "celery": "celery_peer",
}
HERE = Path(__file__).resolve().parent


def load(name: str) -> Any:
    return importlib.import_module(PEERS[name]).Peer


def make(args: argparse.Namespace) -> Any:
    return load(args.peer)(args.url, args.redis_url, args.poll_interval)


def worker_cmd(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(HERE / "run.py"), "worker", args.peer, "--url", args.url]
    cmd += ["--redis-url", args.redis_url, "--concurrency", str(args.concurrency)]
    if args.poll_interval is not None:
        cmd += ["--poll-interval", str(args.poll_interval)]
    return cmd


STARTED = time.monotonic()


def remaining(args: argparse.Namespace) -> float:
    """Seconds left before `--deadline` (less a margin to stop workers and answer)."""
    return max(1.0, args.deadline - (time.monotonic() - STARTED) - 15)


def drain(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    peer = make(args)
    peer.setup()
    workers = WorkerProcs()
    try:
        for i in range(args.workers):
            workers.spawn(worker_cmd(args), tmp / f"stats-{i}.json")
        bulk_seconds = timed(lambda: peer.enqueue_bulk(args.runs))
        if peer.uses_postgres:
            analyze(args.url)
        workers.go()
        try:
            totals = workers.wait_count(args.runs, remaining(args))
        except TimeoutError:
            # Past the deadline: report how far it got, before the harness kills us.
            totals = workers.totals()
            return {
                "error": "timeout",
                "settings": peer.settings(),
                "bulk_rate": args.runs / bulk_seconds,
                "partial_rate": drain_rate(totals),
                "ran": sum(t["count"] for t in totals),
            }
    finally:
        workers.stop()
        peer.close()
    return {
        "settings": peer.settings(),
        "runs": args.runs,
        "workers": args.workers,
        "bulk_rate": args.runs / bulk_seconds,
        "drain_rate": drain_rate(totals),
        "ran": sum(t["count"] for t in totals),
    }


def latency(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    peer = make(args)
    peer.setup()
    workers = WorkerProcs()
    try:
        workers.spawn(worker_cmd(args), tmp / "stats-0.json")
        workers.go()
        # Warm up: the worker's first job (connections, imports) is not measured.
        peer.enqueue_one(0.0)
        workers.wait_count(1, remaining(args))
        time.sleep(args.idle)  # let it go idle
        for _ in range(args.count):
            peer.enqueue_one(time.time())
            time.sleep(args.gap_ms / 1000)
        totals = workers.wait_count(args.count + 1, remaining(args))
    finally:
        workers.stop()
        peer.close()
    values = [v for t in totals for v in t["latencies"]]
    return {
        "settings": peer.settings(),
        "count": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
    }


def steps(args: argparse.Namespace) -> dict[str, Any]:
    peer = make(args)
    if not hasattr(peer, "steps"):
        raise SystemExit(f"{args.peer} has no durable steps")
    result = peer.steps(args.runs, args.steps_per_run, args.concurrency)
    return {"settings": peer.settings(), **result}


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in PEERS:
        try:
            found.update(load(name).versions())
        except Exception as exc:  # report, don't fail: the harness states why
            found[name] = f"unavailable: {exc!r}"
    return found


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("workload", choices=("drain", "latency", "steps", "worker", "versions"))
    parser.add_argument("peer", nargs="?", choices=sorted(PEERS))
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=0, help="0: the peer's setting")
    parser.add_argument("--poll-interval", type=float, default=None)
    parser.add_argument("--count", type=int, default=500, help="latency: jobs")
    parser.add_argument("--gap-ms", type=float, default=5.0, help="latency: pause between jobs")
    parser.add_argument("--idle", type=float, default=1.0, help="latency: idle time before")
    parser.add_argument("--steps-per-run", type=int, default=10)
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="seconds this call may take in all"
    )
    parser.add_argument("--stats", type=Path, default=None, help="worker: the stats file")
    args = parser.parse_args(argv)
    if args.workload != "versions" and args.peer is None:
        parser.error("which peer?")
    return args


def main() -> None:
    args = parse()
    # SIGTERM (the harness's time limit, or the driver stopping a worker) exits cleanly.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    if args.workload == "worker":
        from common import RECORDER

        RECORDER.publish_to(args.stats)
        make(args).worker_main(args.concurrency)
        return
    if args.workload == "versions":
        result: dict[str, Any] = versions()
    elif args.workload == "steps":
        result = steps(args)
    else:
        with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
            result = (drain if args.workload == "drain" else latency)(args, Path(tmp))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
