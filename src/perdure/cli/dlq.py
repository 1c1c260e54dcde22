"""`perdure dlq ls|replay|purge`: dead letters (runs that ended `failed`), through the
engine's dead-letter operations."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.text import Text

from perdure.cli import render
from perdure.cli.common import EXIT_USAGE, CliError, State, new_engine, run_with_engine
from perdure.core.models import RunPage
from perdure.core.statuses import RunStatus
from perdure.engine.engine import Engine

app = typer.Typer(
    name="dlq",
    help="Dead letters: list, replay and purge runs that ended failed.",
    no_args_is_help=True,
    add_completion=False,
)

QueueOpt = Annotated[str | None, typer.Option(help="Only dead letters of this queue.")]
TaskOpt = Annotated[str | None, typer.Option(help="Only dead letters of this task id.")]
#: Runs deleted per engine call by `dlq purge`; it calls again until none is left.
PURGE_BATCH = 1000


@app.command("ls")
def list_dead_letters(
    ctx: typer.Context,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    limit: Annotated[int, typer.Option(help="Dead letters per page (1-1000).")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a previous page (its next cursor).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List dead letters, newest first: retries exhausted, a non-retryable error, or the
    worker-lost cap."""
    state: State = ctx.obj

    async def work(engine: Engine) -> RunPage:
        return await engine.dead_letters(queue=queue, task=task, limit=limit, cursor=cursor)

    page = run_with_engine(new_engine(state), work)
    if as_json:
        render.print_json(
            {"runs": [run.to_json() for run in page.runs], "next_cursor": page.next_cursor}
        )
        return
    out = render.console()
    if not page.runs:
        out.print("no dead letters" + (" match these filters" if queue or task else ""))
        return
    out.print(render.dead_letters_table(page))
    if page.next_cursor is not None:
        out.print(Text(f"more: perdure dlq ls --cursor {page.next_cursor}", style="dim"))


@app.command("replay")
def replay_dead_letter(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's run id.")],
) -> None:
    """Start a new run of the same task with the same input; prints the new run's id. The
    dead letter stays until purged."""
    state: State = ctx.obj

    async def work(engine: Engine) -> str:
        run = await engine.get_run(run_id)
        if run.status is not RunStatus.FAILED:
            raise CliError(
                f"run {run_id!r} is {run.status.value}, not a dead letter (failed); "
                "`perdure runs replay` replays any run"
            )
        return (await engine.replay(run_id)).id

    sys.stdout.write(run_with_engine(new_engine(state), work) + "\n")


@app.command("purge")
def purge_dead_letters(
    ctx: typer.Context,
    run_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[ID...]", help="Dead letters to delete (default: all that match)."),
    ] = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
) -> None:
    """Delete dead letters with their history: the given ids, or every one matching the
    filters. Prints how many were deleted; runs that are not dead letters are left alone."""
    state: State = ctx.obj
    if run_ids and (queue is not None or task is not None):
        raise CliError("give run ids or --queue/--task filters, not both", EXIT_USAGE)

    async def work(engine: Engine) -> int:
        if run_ids:
            return await engine.purge_dead_letters(run_ids=list(run_ids))
        total = 0
        while True:
            deleted = await engine.purge_dead_letters(queue=queue, task=task, limit=PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    deleted = run_with_engine(new_engine(state), work)
    line = f"purged {deleted} dead letter{'' if deleted == 1 else 's'}"
    if run_ids and deleted < len(set(run_ids)):
        skipped = len(set(run_ids)) - deleted
        line += f"; {skipped} id{'' if skipped == 1 else 's'} not found or not failed, left alone"
    render.console().print(Text(line))
