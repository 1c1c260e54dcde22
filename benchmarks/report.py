"""Markdown tables of the harness's results (`benchmarks/results/<date>-{perdure,peers}.json`)
rendered into `benchmarks/results/<date>.md` and printed."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

Metrics = dict[str, Any]
Getter = Callable[[Metrics], Any]

# Goals of issue 7 on this 2-core class of machine: (SQLite, PostgreSQL).
GOALS: dict[str, tuple[str, str]] = {
    "bulk": ("≥ 20,000", "≥ 20,000"),
    "drain1": ("≥ 10,000", "≥ 5,000"),
    "drain2": ("≥ 10,000", "≥ 5,000"),
    "lat_p50": ("≤ 2", "≤ 5"),
    "alone_p50": ("≤ 0.3", "≤ 1"),
    "tree": ("≥ 7,500", "≥ 7,500"),
    "claim_ratio": ("≤ 1.5", "≤ 1.5"),
}


def _value(row: Metrics, key: str, field: str) -> Any:
    """`row[key][field]`, or the workload's error text ("timeout", "pending", …)."""
    cell = row.get(key)
    if cell is None:
        return None
    if "error" in cell:
        if field in cell:  # measured before the workload failed (a timed-out drain's bulk rate)
            return cell[field]
        partial = cell.get("partial_rate")
        if cell["error"] == "timeout" and field == "drain_rate" and partial:
            return f"timeout (≈{partial:,.0f}/s; {cell['ran']:,} ran)"
        return str(cell["error"])
    return cell.get(field)


def _bulk(row: Metrics) -> Any:
    values = [_value(row, k, "bulk_rate") for k in ("drain1", "drain2")]
    numbers = [v for v in values if isinstance(v, int | float)]
    if numbers:
        return statistics.fmean(numbers)
    return next((v for v in values if v is not None), None)


# (key, label, getter, higher is better)
PERDURE_ROWS: list[tuple[str, str, Getter, bool]] = [
    ("bulk", "(a) bulk trigger, runs/s", _bulk, True),
    (
        "drain1",
        "(b) drain {runs} pre-queued no-op runs, 1 worker process, runs/s",
        lambda r: _value(r, "drain1", "drain_rate"),
        True,
    ),
    (
        "drain2",
        "(b) drain {runs} pre-queued no-op runs, 2 worker processes, runs/s",
        lambda r: _value(r, "drain2", "drain_rate"),
        True,
    ),
    (
        "lat_p50",
        "(c) enqueue→start p50, ms (idle worker process)",
        lambda r: _value(r, "latency", "p50_ms"),
        False,
    ),
    (
        "lat_p99",
        "(c) enqueue→start p99, ms (idle worker process)",
        lambda r: _value(r, "latency", "p99_ms"),
        False,
    ),
    (
        "lat_in_p50",
        "(c) enqueue→start p50, ms (in-process worker)",
        lambda r: _value(r, "latency_inproc", "p50_ms"),
        False,
    ),
    (
        "lat_in_p99",
        "(c) enqueue→start p99, ms (in-process worker)",
        lambda r: _value(r, "latency_inproc", "p99_ms"),
        False,
    ),
    (
        "alone_p50",
        "(d) per-step overhead p50, ms (one run of 200 steps alone)",
        lambda r: _value(r, "steps", "alone_p50_ms"),
        False,
    ),
    (
        "alone_p99",
        "(d) per-step overhead p99, ms (one run alone)",
        lambda r: _value(r, "steps", "alone_p99_ms"),
        False,
    ),
    (
        "step_p50",
        "(d) per-step time p50, ms (10-step runs, 10 at a time)",
        lambda r: _value(r, "steps", "p50_ms"),
        False,
    ),
    (
        "step_p99",
        "(d) per-step time p99, ms (10 at a time)",
        lambda r: _value(r, "steps", "p99_ms"),
        False,
    ),
    (
        "steps_s",
        "(d) steps/s (10-step runs, 10 at a time)",
        lambda r: _value(r, "steps", "steps_per_s"),
        True,
    ),
    (
        "tree",
        "(e) task-tree workload (`tree.py`), executions/s",
        lambda r: _value(r, "tree", "executions_per_s"),
        True,
    ),
    (
        "claim_10k",
        "(f) claim of 64 runs, 10,000 queued, ms",
        lambda r: _value(r, "claim", "claim_10k_ms"),
        False,
    ),
    (
        "claim_1m",
        "(f) claim of 64 runs, {large} queued, ms",
        lambda r: _value(r, "claim", "claim_1m_ms"),
        False,
    ),
    (
        "claim_ratio",
        "(f) claim cost ratio, {large} ÷ 10,000 queued",
        lambda r: _value(r, "claim", "ratio"),
        False,
    ),
]
SHARED = (
    "bulk",
    "drain1",
    "drain2",
    "lat_p50",
    "lat_p99",
    "alone_p50",
    "alone_p99",
    "step_p50",
    "step_p99",
    "steps_s",
)
PEER_LABELS = {
    "bulk": "bulk enqueue, jobs/s",
    "drain1": "drain {runs} pre-queued no-op jobs, 1 worker process, jobs/s",
    "drain2": "drain {runs} pre-queued no-op jobs, 2 worker processes, jobs/s",
    "lat_p50": "enqueue→start p50, ms (idle worker)",
    "lat_p99": "enqueue→start p99, ms (idle worker)",
    "alone_p50": "per-step overhead p50, ms (one run of 200 steps alone)",
    "alone_p99": "per-step overhead p99, ms (one run alone)",
    "step_p50": "per-step time p50, ms (10-step runs, 10 at a time)",
    "step_p99": "per-step time p99, ms (10 at a time)",
    "steps_s": "steps/s (10-step runs, 10 at a time)",
}


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def advantage(ours: Any, theirs: Any, higher_better: bool) -> str:
    """How many times better perdure is than a peer (below 1: perdure is behind)."""
    if not isinstance(ours, int | float) or not isinstance(theirs, int | float):
        return "—"
    if ours <= 0 or theirs <= 0 or math.isnan(ours) or math.isnan(theirs):
        return "—"
    ratio = ours / theirs if higher_better else theirs / ours
    return f"{ratio:.2f}x"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _label(text: str, settings: dict[str, Any]) -> str:
    sizes = settings.get("claim sizes", [0, 1_000_000])
    return text.format(runs=f"{settings.get('runs', 20_000):,}", large=f"{sizes[-1]:,}")


def perdure_table(perdure: dict[str, Metrics], settings: dict[str, Any]) -> str:
    backends = [b for b in ("sqlite", "postgres") if b in perdure]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    header = ["workload", *(names[b] for b in backends), "goal (SQLite / PostgreSQL)"]
    rows: list[list[str]] = []
    for key, label, get, _ in PERDURE_ROWS:
        values = [get(perdure[b]) for b in backends]
        if all(v is None for v in values):
            continue
        goal = GOALS.get(key)
        goal_text = " / ".join(goal) if goal else ""
        rows.append([_label(label, settings), *(fmt(v) for v in values), goal_text])
    return table(header, rows)


def peers_tables(
    perdure_pg: Metrics, peers: dict[str, Metrics], settings: dict[str, Any]
) -> tuple[str, str]:
    labels = list(peers)
    header = ["workload", "perdure (PostgreSQL)", *labels]
    absolute: list[list[str]] = []
    ratios: list[list[str]] = []
    getters = {key: (get, hb) for key, _, get, hb in PERDURE_ROWS}
    for key in SHARED:
        get, higher_better = getters[key]
        ours = get(perdure_pg)
        theirs = [get(peers[label]) for label in labels]
        if all(v is None for v in theirs):
            continue
        label = _label(PEER_LABELS[key], settings)
        absolute.append([label, fmt(ours), *(fmt(v) for v in theirs)])
        ratios.append([label, "1", *(advantage(ours, v, higher_better) for v in theirs)])
    return table(header, absolute), table(header, ratios)


def _load(results: Path, date: str, suite: str) -> dict[str, Any] | None:
    path = results / f"{date}-{suite}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _environment_lines(env: dict[str, Any]) -> list[str]:
    lines = [f"- {key}: {value}" for key, value in env.items() if key not in ("peers",)]
    peers = env.get("peers")
    if peers:
        lines.append(f"- peers' virtualenv: {peers}")
    return lines


def _errors(document: dict[str, Any], section: str) -> list[str]:
    notes: list[str] = []
    for name, row in document.get(section, {}).items():
        for workload, cell in row.items():
            if isinstance(cell, dict) and "error" in cell and cell["error"] != "pending":
                notes.append(f"- {name}, {workload}: {cell['error']}")
    return notes


def build_markdown(results: Path, date: str) -> str:
    perdure_doc = _load(results, date, "perdure")
    peers_doc = _load(results, date, "peers")
    out = [f"# Benchmark results, {date}", ""]
    out += [
        "Produced by `make bench` (perdure on SQLite and PostgreSQL: "
        f"`{date}-perdure.json`) and `make bench-peers` (perdure and the peers on the same "
        f"PostgreSQL and Redis in one run: `{date}-peers.json`). What each figure measures: "
        "`benchmarks/README.md`; discussion: `docs/performance.md`.",
        "",
    ]
    if perdure_doc:
        out += ["## perdure (`make bench`)", ""]
        out += _environment_lines(perdure_doc["environment"])
        out += [
            f"- settings: {perdure_doc['settings']}",
            f"- wall time: {perdure_doc['wall_s']:.0f} s",
            "",
        ]
        out += [perdure_table(perdure_doc["perdure"], perdure_doc["settings"]), ""]
        notes = _errors(perdure_doc, "perdure")
        if notes:
            out += ["Failures:", "", *notes, ""]
        for backend, row in perdure_doc["perdure"].items():
            tree = row.get("tree", {})
            if tree.get("error") == "pending":
                out += [
                    f"- (e) on {backend}: pending — `benchmarks/tree.py` does not exist yet; "
                    "the harness runs it as soon as it does.",
                    "",
                ]
            elif tree.get("output"):
                out += [
                    f"`tree.py --backend {backend}` printed:",
                    "",
                    "```",
                    tree["output"].strip(),
                    "```",
                    "",
                ]
    if peers_doc:
        out += ["## Side by side with the peers (`make bench-peers`)", ""]
        out += _environment_lines(peers_doc["environment"])
        out += [
            f"- settings: {peers_doc['settings']}",
            f"- wall time: {peers_doc['wall_s']:.0f} s",
            "",
        ]
        pg = peers_doc["perdure"].get("postgres", {})
        absolute, ratios = peers_tables(pg, peers_doc.get("peers", {}), peers_doc["settings"])
        out += [
            "Absolute figures (same machine, same PostgreSQL server, same run):",
            "",
            absolute,
            "",
        ]
        out += [
            "perdure's advantage over each peer: perdure ÷ peer for rates, peer ÷ perdure for "
            "latencies and step times — above 1x perdure is ahead, below 1x it is behind:",
            "",
            ratios,
            "",
            "Peer settings, as each peer's driver reported them:",
            "",
        ]
        for label, row in peers_doc.get("peers", {}).items():
            settings = next(
                (c["settings"] for c in row.values() if isinstance(c, dict) and "settings" in c),
                None,
            )
            out.append(f"- {label}: {settings or 'none reported (every workload failed)'}")
        out.append("")
        notes = _errors(peers_doc, "peers") + _errors(peers_doc, "perdure")
        if notes:
            out += ["Failures:", "", *notes, ""]
    return "\n".join(out)


def write_markdown(results: Path, date: str) -> Path:
    path = results / f"{date}.md"
    path.write_text(build_markdown(results, date))
    return path


def render_console(results: Path, date: str) -> None:
    print((results / f"{date}.md").read_text())
