"""`perdure runs ls|show|cancel|replay`: read and control runs through the engine's operations."""

from __future__ import annotations

import sys
from collections import deque
from typing import Annotated

import typer
from rich.text import Text

from perdure.cli import render
from perdure.cli.common import CliError, State, new_engine, run_with_engine
from perdure.core.models import Run, RunEvent, RunPage
from perdure.core.statuses import RunStatus, parse_status
from perdure.engine.engine import Engine

app = typer.Typer(
    name="runs",
    help="List, inspect, cancel and replay runs.",
    no_args_is_help=True,
    add_completion=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

#: `runs show --tree` shows at most this many runs, and this many levels below the run.
TREE_MAX_NODES = 1000
TREE_MAX_DEPTH = 50


@app.command("ls")
def list_runs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only runs in this status, e.g. failed.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only runs of this task id.")] = None,
    queue: Annotated[str | None, typer.Option(help="Only runs on this queue.")] = None,
    limit: Annotated[int, typer.Option(help="Runs per page (1-1000).")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a previous page (its next cursor).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first."""
    state: State = ctx.obj
    if status is not None:
        status = parse_status(status).value  # a bad value fails before connecting

    async def work(engine: Engine) -> RunPage:
        return await engine.list_runs(
            task_id=task, status=status, queue=queue, limit=limit, cursor=cursor
        )

    page = run_with_engine(new_engine(state), work)
    if as_json:
        render.print_json(
            {"runs": [run.to_json() for run in page.runs], "next_cursor": page.next_cursor}
        )
        return
    out = render.console()
    if not page.runs:
        out.print("no runs" + (" match these filters" if status or task or queue else ""))
        return
    out.print(render.runs_table(page))
    if page.next_cursor is not None:
        out.print(Text(f"more: perdure runs ls --cursor {page.next_cursor}", style="dim"))


@app.command("show")
def show_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id.")],
    as_json: JsonFlag = False,
    tree: Annotated[
        bool,
        typer.Option(
            "--tree",
            help=f"Print the run's tree of child runs (id, task, status) instead, up to "
            f"{TREE_MAX_NODES:,} runs.",
        ),
    ] = False,
) -> None:
    """Show a run: status, attempt, input, output, error and its event history."""
    state: State = ctx.obj
    if tree:
        shown = run_with_engine(new_engine(state), lambda engine: collect_tree(engine, run_id))
        if as_json:
            render.print_json(render.run_tree_json(shown))
        else:
            render.console().print(render.run_tree(shown))
        return

    async def work(engine: Engine) -> tuple[Run, list[RunEvent]]:
        run = await engine.get_run(run_id)
        events: list[RunEvent] = []
        while True:  # the history comes in pages of up to 1,000 events
            page = await engine.events(run_id, events[-1].seq if events else 0)
            events += page
            if len(page) < 1000:
                return run, events

    run, events = run_with_engine(new_engine(state), work)
    if as_json:
        render.print_json(render.run_json(run, events))
        return
    render.console().print(render.run_detail(run, events))


@app.command("cancel")
def cancel_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id.")],
) -> None:
    """Cancel a run that has not finished. A running attempt is told to stop."""
    state: State = ctx.obj

    async def work(engine: Engine) -> Run:
        return await engine.cancel(run_id, "cancelled from the command line")

    run = run_with_engine(new_engine(state), work)
    if run.status is not RunStatus.CANCELLED:
        raise CliError(
            f"run {run.id!r} had already finished ({run.status.value}); it was not cancelled"
        )
    render.console().print(Text(f"cancelled {run.id} ({run.task_id})"))


@app.command("replay")
def replay_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to replay.")],
) -> None:
    """Start a new run of the same task with the same input; prints the new run's id."""
    state: State = ctx.obj

    async def work(engine: Engine) -> str:
        return (await engine.replay(run_id)).id

    sys.stdout.write(run_with_engine(new_engine(state), work) + "\n")


async def collect_tree(
    engine: Engine,
    run_id: str,
    max_nodes: int | None = None,
    max_depth: int | None = None,
) -> render.RunTree:
    """The run and its descendants, breadth first (so the top levels show when the tree is
    cut), through `engine.children`; children beyond the limits are counted, not shown."""
    max_nodes = TREE_MAX_NODES if max_nodes is None else max_nodes
    max_depth = TREE_MAX_DEPTH if max_depth is None else max_depth
    top = render.RunTree(await engine.get_run(run_id))
    shown = 1
    queue: deque[tuple[render.RunTree, int]] = deque([(top, 0)])
    while queue:
        node, depth = queue.popleft()
        kids = await engine.children(node.run.id)
        room = 0 if depth >= max_depth else max(0, max_nodes - shown)
        for kid in kids[:room]:
            branch = render.RunTree(kid)
            node.children.append(branch)
            queue.append((branch, depth + 1))
        shown += len(node.children)
        node.hidden = len(kids) - len(node.children)
    return top
