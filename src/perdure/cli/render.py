"""Rendering runs and events for a terminal (rich) or as JSON. User data is shown as `Text`,
never interpreted as markup."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from rich.console import Console, Group, RenderableType
from rich.json import JSON
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from perdure.core.limits import QueueLimits, RateLimit
from perdure.core.models import Run, RunEvent, RunPage
from perdure.core.statuses import RunStatus
from perdure.engine.queues import QueueInfo

STATUS_STYLES: dict[RunStatus, str] = {
    RunStatus.DELAYED: "bright_black",
    RunStatus.QUEUED: "white",
    RunStatus.RUNNING: "cyan",
    RunStatus.RETRYING: "yellow",
    RunStatus.SUSPENDED: "blue",
    RunStatus.WAITING_FOR_CHILDREN: "blue",
    RunStatus.WAITING_FOR_FINALIZE: "blue",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "bold red",
    RunStatus.TIMED_OUT: "red",
    RunStatus.FINALIZE_FAILED: "red",
    RunStatus.CANCELLED: "magenta",
    RunStatus.EXPIRED: "bright_black",
}

#: Width used when stdout is not a terminal, so piped tables don't wrap run ids at 80 columns.
PIPE_WIDTH = 200


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, soft_wrap=False, highlight=False)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def status_text(status: RunStatus) -> Text:
    return Text(status.value, style=STATUS_STYLES.get(status, ""))


def format_time(value: datetime | None, *, millis: bool = False) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if millis:
        text += f".{local.microsecond // 1000:03d}"
    return text


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run_duration(run: Run, now: datetime | None = None) -> str:
    """Time from the first start to the finish; for a run still going, up to now (`…`)."""
    if run.started_at is None:
        return "-"
    if run.finished_at is not None:
        return format_seconds((run.finished_at - run.started_at).total_seconds())
    current = now or datetime.now(UTC)
    return format_seconds(max(0.0, (current - run.started_at).total_seconds())) + "…"


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def runs_table(page: RunPage) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    now = datetime.now(UTC)
    for run in page.runs:
        table.add_row(
            Text(run.id),
            Text(run.task_id),
            status_text(run.status),
            Text(f"{run.attempt}/{run.max_attempts}"),
            Text(format_time(run.created_at)),
            Text(run_duration(run, now)),
        )
    return table


def run_fields(run: Run) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    rows: list[tuple[str, RenderableType]] = [
        ("id", Text(run.id)),
        ("task", Text(run.task_id + (f" (version {run.version})" if run.version else ""))),
        ("status", status_text(run.status)),
        ("attempt", Text(f"{run.attempt} of {run.max_attempts}")),
        ("queue", Text(f"{run.queue} (priority {run.priority})")),
        ("created", Text(format_time(run.created_at, millis=True))),
        ("started", Text(format_time(run.started_at, millis=True))),
        ("finished", Text(format_time(run.finished_at, millis=True))),
        ("duration", Text(run_duration(run))),
    ]
    if run.lost_leases:
        rows.append(("lost leases", Text(str(run.lost_leases))))
    if run.timeout is not None:
        rows.append(("timeout", Text(format_seconds(run.timeout))))
    if run.lease_owner and not run.status.is_terminal:
        rows.append(
            ("leased by", Text(f"{run.lease_owner} until {format_time(run.lease_expires_at)}"))
        )
    if run.idempotency_key:
        rows.append(("idempotency key", Text(run.idempotency_key)))
    if run.concurrency_key:
        rows.append(("concurrency key", Text(run.concurrency_key)))
    if run.tags:
        rows.append(("tags", Text(", ".join(run.tags))))
    if run.parent_id:
        rows.append(("parent", Text(run.parent_id)))
    if run.root_id and run.root_id != run.id:
        rows.append(("root", Text(run.root_id)))
    if run.metadata:
        rows.append(("metadata", Text(compact_json(run.metadata))))
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def _json_block(value: Any) -> RenderableType:
    return JSON(json.dumps(value, default=str), highlight=False)


def _without_tracebacks(data: Any) -> Any:
    """Event data as shown in the history table: tracebacks are in the run's error section."""
    if isinstance(data, dict):
        items = cast(dict[str, Any], data).items()
        return {key: _without_tracebacks(value) for key, value in items if key != "traceback"}
    return data


def events_table(events: list[RunEvent]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("seq", justify="right")
    table.add_column("at", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("data", overflow="fold")
    for event in events:
        table.add_row(
            Text(str(event.seq)),
            Text(format_time(event.at, millis=True)),
            Text(event.type, style=_event_style(event.type)),
            Text(compact_json(_without_tracebacks(event.data), limit=300)),
        )
    return table


def _event_style(event_type: str) -> str:
    if event_type in ("completed",):
        return "green"
    if event_type in ("failed", "attempt_failed", "timed_out", "lease_lost"):
        return "red"
    if event_type in ("cancelled", "retry_scheduled"):
        return "yellow"
    return ""


def run_detail(run: Run, events: list[RunEvent]) -> Group:
    parts: list[RenderableType] = [run_fields(run), Text(""), Text("input", style="bold")]
    parts.append(_json_block(run.input))
    if run.output is not None or run.status is RunStatus.COMPLETED:
        parts += [Text(""), Text("output", style="bold"), _json_block(run.output)]
    if run.error is not None:
        error = run.error
        retry = "retryable" if error.retryable else "not retryable"
        parts += [
            Text(""),
            Text("error", style="bold red"),
            Text(f"{error.type}: {error.message} ({retry})"),
        ]
        if error.traceback:
            parts.append(Text(error.traceback.rstrip("\n"), style="bright_black"))
    parts += [Text(""), Text(f"events ({len(events)})", style="bold"), events_table(events)]
    return Group(*parts)


def run_json(run: Run, events: list[RunEvent] | None = None) -> dict[str, Any]:
    data = run.to_json()
    if events is not None:
        data["events"] = [event.to_json() for event in events]
    return data


# --- queues and dead letters -------------------------------------------------------------------


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_rate(rate: RateLimit | None) -> str:
    """`100/60s`: at most 100 starts in any 60-second window."""
    return "-" if rate is None else f"{rate.limit}/{rate.per:g}s"


def limits_summary(limits: QueueLimits) -> str:
    return (
        f"concurrency {_limit(limits.concurrency)}, "
        f"key concurrency {_limit(limits.key_concurrency)}, "
        f"rate {format_rate(limits.rate_limit)}, key rate {format_rate(limits.key_rate_limit)}, "
        f"max depth {_limit(limits.max_depth)}" + (", paused" if limits.paused else "")
    )


def queues_table(infos: list[QueueInfo]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("queue", no_wrap=True)
    for name in ("waiting", "running", "suspended", "concurrency", "key concurrency"):
        table.add_column(name, justify="right")
    table.add_column("rate", justify="right", no_wrap=True)
    table.add_column("key rate", justify="right", no_wrap=True)
    table.add_column("max depth", justify="right")
    table.add_column("paused", no_wrap=True)
    for info in infos:
        limits = info.limits
        table.add_row(
            Text(info.name),
            Text(str(info.waiting)),
            Text(str(info.running)),
            Text(str(info.suspended)),
            Text(_limit(limits.concurrency)),
            Text(_limit(limits.key_concurrency)),
            Text(format_rate(limits.rate_limit)),
            Text(format_rate(limits.key_rate_limit)),
            Text(_limit(limits.max_depth)),
            Text("paused", style="yellow") if limits.paused else Text("no"),
        )
    return table


def _rate_json(rate: RateLimit | None) -> dict[str, Any] | None:
    return None if rate is None else {"limit": rate.limit, "per": rate.per}


def queue_json(info: QueueInfo) -> dict[str, Any]:
    limits = info.limits
    return {
        "name": info.name,
        "waiting": info.waiting,
        "running": info.running,
        "suspended": info.suspended,
        "concurrency": limits.concurrency,
        "key_concurrency": limits.key_concurrency,
        "rate_limit": _rate_json(limits.rate_limit),
        "key_rate_limit": _rate_json(limits.key_rate_limit),
        "max_depth": limits.max_depth,
        "paused": limits.paused,
    }


def dead_letters_table(page: RunPage) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("queue", no_wrap=True)
    table.add_column("attempt", justify="right")
    table.add_column("failed at", no_wrap=True)
    table.add_column("error", overflow="fold")
    for run in page.runs:
        error = "-" if run.error is None else f"{run.error.type}: {run.error.message}"
        table.add_row(
            Text(run.id),
            Text(run.task_id),
            Text(run.queue),
            Text(str(run.attempt)),
            Text(format_time(run.finished_at)),
            Text(error if len(error) <= 120 else error[:119] + "…"),
        )
    return table


@dataclass(eq=False)
class RunTree:
    """A run and the part of its subtree that is shown; `hidden` counts the children left out
    (too many nodes, or too deep)."""

    run: Run
    children: list[RunTree] = field(default_factory=list["RunTree"])
    hidden: int = 0


def _tree_label(run: Run) -> Text:
    label = Text(run.id)
    label.append("  ")
    label.append(run.task_id)
    label.append("  ")
    label.append_text(status_text(run.status))
    return label


def run_tree(tree: RunTree) -> Tree:
    """`perdure runs show --tree`: one line per run (id, task, status), children indented."""
    top = Tree(_tree_label(tree.run), guide_style="bright_black")
    pending: list[tuple[Tree, RunTree]] = [(top, tree)]
    while pending:  # iterative: a deep tree must not exhaust the recursion limit here
        branch, node = pending.pop()
        for kid in node.children:
            pending.append((branch.add(_tree_label(kid.run)), kid))
        if node.hidden:
            branch.add(Text(f"… {node.hidden} more", style="dim"))
    return top


def run_tree_json(tree: RunTree) -> dict[str, Any]:
    def node(item: RunTree) -> dict[str, Any]:
        return {
            "id": item.run.id,
            "task_id": item.run.task_id,
            "status": item.run.status.value,
            "children": [node(kid) for kid in item.children],
            "more": item.hidden,
        }

    return node(tree)
