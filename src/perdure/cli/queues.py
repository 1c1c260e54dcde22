"""`perdure queues ls|pause|resume|set-limit`: queue depths and limits, through the engine's
queue operations."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from perdure.cli import render
from perdure.cli.common import EXIT_USAGE, CliError, State, new_engine, run_with_engine
from perdure.core.limits import QueueLimits, RateLimit
from perdure.engine.engine import Engine
from perdure.engine.queues import QueueInfo

app = typer.Typer(
    name="queues",
    help="Show queue depths and limits; pause, resume and change limits at run time.",
    no_args_is_help=True,
    add_completion=False,
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The queue's name.")]


@app.command("ls")
def list_queues(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List queues that have limits or unfinished runs: depth, running, limits, paused."""
    state: State = ctx.obj

    async def work(engine: Engine) -> list[QueueInfo]:
        return await engine.queues()

    infos = run_with_engine(new_engine(state), work)
    if as_json:
        render.print_json([render.queue_json(info) for info in infos])
        return
    if not infos:
        render.console().print("no queues: none has limits or unfinished runs")
        return
    render.console().print(render.queues_table(infos))


@app.command("pause")
def pause_queue(ctx: typer.Context, name: NameArg) -> None:
    """Stop workers claiming from NAME (running attempts finish; triggers still land)."""
    state: State = ctx.obj

    async def work(engine: Engine) -> None:
        await engine.pause_queue(name)

    run_with_engine(new_engine(state), work)
    render.console().print(Text(f"paused queue {name}: its runs wait until it is resumed"))


@app.command("resume")
def resume_queue(ctx: typer.Context, name: NameArg) -> None:
    """Let workers claim from NAME again."""
    state: State = ctx.obj

    async def work(engine: Engine) -> None:
        await engine.resume_queue(name)

    run_with_engine(new_engine(state), work)
    render.console().print(Text(f"resumed queue {name}"))


def _count(flag: str, text: str | None) -> int | None:
    """A limit given as N (0 removes it), or None when the flag was not given."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CliError(
            f"invalid value for '{flag}': {text!r}; expected a whole number >= 0 "
            "(0 removes the limit)",
            EXIT_USAGE,
        )
    return value


def _rate(flag: str, text: str | None) -> RateLimit | int | None:
    """A rate given as N/SECONDS (e.g. 100/60), or 0 to remove it."""
    if text is None:
        return None
    if text.strip() == "0":
        return 0
    limit_text, sep, per_text = text.partition("/")
    try:
        limit, per = int(limit_text), float(per_text)
        if not sep or limit < 1 or not 0 < per < float("inf"):
            raise ValueError(text)
    except ValueError:
        raise CliError(
            f"invalid value for '{flag}': {text!r}; expected N/SECONDS, e.g. 100/60 for "
            "100 starts per minute (0 removes the limit)",
            EXIT_USAGE,
        ) from None
    return RateLimit(limit, per=per)


@app.command("set-limit")
def set_limit(
    ctx: typer.Context,
    name: NameArg,
    concurrency: Annotated[
        str | None, typer.Option(metavar="N", help="Runs of the queue running at once.")
    ] = None,
    key_concurrency: Annotated[
        str | None, typer.Option(metavar="N", help="Runs of one concurrency key at once.")
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(metavar="N/SECONDS", help="Starts per sliding window, e.g. 100/60."),
    ] = None,
    key_rate: Annotated[
        str | None,
        typer.Option(metavar="N/SECONDS", help="Starts per window for each concurrency key."),
    ] = None,
    max_depth: Annotated[
        str | None,
        typer.Option(metavar="N", help="Waiting runs allowed; a trigger past it is rejected."),
    ] = None,
) -> None:
    """Change some limits of NAME now; the others stay. 0 removes a limit.

    Workers enforce the new limits at their next claim. Limits declared in code with
    engine.queue(...) are written again when that code's engine connects (a deploy)."""
    state: State = ctx.obj
    changes: dict[str, Any] = {
        key: value
        for key, value in {
            "concurrency": _count("--concurrency", concurrency),
            "key_concurrency": _count("--key-concurrency", key_concurrency),
            "rate_limit": _rate("--rate", rate),
            "key_rate_limit": _rate("--key-rate", key_rate),
            "max_depth": _count("--max-depth", max_depth),
        }.items()
        if value is not None
    }
    if not changes:
        raise CliError(
            "nothing to change: give at least one of --concurrency, --key-concurrency, "
            "--rate, --key-rate, --max-depth",
            EXIT_USAGE,
        )

    async def work(engine: Engine) -> QueueLimits:
        return await engine.set_queue_limits(name, **changes)

    limits = run_with_engine(new_engine(state), work)
    render.console().print(Text(f"queue {name}: {render.limits_summary(limits)}"))
