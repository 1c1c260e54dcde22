"""The `perdure` command line: `worker`, `trigger`, `runs ls|show|cancel|replay`,
`queues ls|pause|resume|set-limit`, `dlq ls|replay|purge`, `migrate`.

Every command goes through the engine's public operations; none runs SQL of its own. Errors
a user can fix are one line on stderr (`error: …`), exit code 2 for bad input and 1 otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from perdure.cli import render
from perdure.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliError,
    State,
    load_engine,
    new_engine,
    override_options,
    redact_url,
    run,
    run_with_engine,
)
from perdure.cli.dlq import app as dlq_app
from perdure.cli.queues import app as queues_app
from perdure.cli.runs import app as runs_app
from perdure.core.errors import (
    ConfigurationError,
    InputValidationError,
    PerdureError,
    RunNotFoundError,
    TaskNotFoundError,
)
from perdure.core.models import Run
from perdure.core.statuses import RunStatus
from perdure.engine.config import OPTIONS
from perdure.engine.engine import Engine
from perdure.engine.handle import RunHandle

app = typer.Typer(
    name="perdure",
    help="perdure: durable task execution. Run workers, trigger tasks, inspect runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runs_app)
app.add_typer(queues_app)
app.add_typer(dlq_app)

_SPECS = {spec.name: spec for spec in OPTIONS}
_METAVARS = {"_positive_int": "N", "_duration": "SECONDS", "_queues": "Q1,Q2"}


def _flag(name: str) -> Any:
    """A `perdure worker` flag for one engine option, described by the option table."""
    spec = _SPECS[name]
    return typer.Option(
        help=f"{spec.help[0].upper()}{spec.help[1:]} (env {spec.env}).",
        metavar=_METAVARS.get(getattr(spec.parse, "__name__", ""), "VALUE"),
    )


@app.callback()
def global_options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="PERDURE_DATABASE_URL",
            help="Database URL (sqlite:///path.db, postgresql://…, memory://); default "
            "SQLite at ./.perdure/perdure.db.",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    source = ctx.get_parameter_source("database_url")
    ctx.obj = State(
        database_url=database_url,
        database_url_explicit=source is not None and source.name == "COMMANDLINE",
    )


# --- worker ----------------------------------------------------------------------------------


@app.command()
def worker(
    ctx: typer.Context,
    app_spec: Annotated[
        str,
        typer.Argument(
            metavar="APP", help="Where the engine is, as module:attribute (e.g. tasks:engine)."
        ),
    ],
    concurrency: Annotated[str | None, _flag("concurrency")] = None,
    queues: Annotated[str | None, _flag("queues")] = None,
    lease: Annotated[str | None, _flag("lease")] = None,
    heartbeat: Annotated[str | None, _flag("heartbeat")] = None,
    poll_interval: Annotated[str | None, _flag("poll_interval")] = None,
    shutdown_grace: Annotated[str | None, _flag("shutdown_grace")] = None,
    max_children: Annotated[str | None, _flag("max_children")] = None,
    max_payload_bytes: Annotated[str | None, _flag("max_payload_bytes")] = None,
    max_lost_leases: Annotated[str | None, _flag("max_lost_leases")] = None,
    log_level: Annotated[
        str, typer.Option(help="Logging level: debug, info, warning or error.")
    ] = "info",
) -> None:
    """Run a worker for the tasks defined on APP's engine until SIGTERM or Ctrl+C.

    On the first signal it stops claiming and gives running attempts --shutdown-grace seconds
    to finish (the rest go back to the queue); a second signal exits at once.
    """
    state: State = ctx.obj
    flags: dict[str, Any] = {
        name: value
        for name, value in {
            "concurrency": concurrency,
            "queues": queues,
            "lease": lease,
            "heartbeat": heartbeat,
            "poll_interval": poll_interval,
            "shutdown_grace": shutdown_grace,
            "max_children": max_children,
            "max_payload_bytes": max_payload_bytes,
            "max_lost_leases": max_lost_leases,
        }.items()
        if value is not None
    }
    level = logging.getLevelNamesMapping().get(log_level.upper())
    if level is None:
        raise CliError(
            f"invalid value for '--log-level': {log_level!r}; expected one of: debug, info, "
            "warning, error",
            EXIT_USAGE,
        )
    engine = load_engine(app_spec)
    if state.database_url_explicit:
        flags["database_url"] = state.database_url
    override_options(engine, flags)
    if not engine.tasks:
        raise CliError(
            f"{app_spec!r} defines no tasks; define them with @engine.task(...) in that module "
            "(or in modules it imports)",
            EXIT_USAGE,
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # psycopg's pool logs every checkout at INFO and every reconnect attempt at WARNING;
    # perdure reports database outages itself, once (engine/breaker.py).
    logging.getLogger("psycopg").setLevel(level if level <= logging.DEBUG else logging.ERROR)
    options = engine.options
    render.console(stderr=True).print(
        Text(
            f"perdure worker: app {app_spec}, database {redact_url(engine.url)}, "
            f"tasks {', '.join(sorted(engine.tasks))}, concurrency {options.concurrency}, "
            f"lease {options.lease:g}s"
        )
    )
    run(_serve(engine))


class ContextFormatter(logging.Formatter):
    """Appends the context perdure attaches to its log records (`run_id=… worker_id=…`)."""

    KEYS = ("run_id", "task_id", "attempt", "worker_id")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [f"{key}={getattr(record, key)}" for key in self.KEYS if hasattr(record, key)]
        return f"{text} [{' '.join(context)}]" if context else text


def freeze_startup_heap() -> None:
    """Exempt what the worker process has built so far (modules, task definitions, their
    schemas) from the garbage collector's full collections. It lives as long as the process,
    yet a busy worker's full collections would walk all of it again and again (about a tenth
    of its CPU on no-op runs). This process is perdure's own: an embedded engine leaves the
    collector of its host process alone."""
    gc.collect()
    gc.freeze()


async def _serve(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    log = logging.getLogger("perdure.cli")

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning(
                "second %s: exiting now; running attempts will be re-run elsewhere "
                "once their leases expire",
                signal.Signals(signum).name,
            )
            os._exit(EXIT_FAILURE)
        log.info(
            "%s: shutting down (up to %gs for running attempts; signal again to exit now)",
            signal.Signals(signum).name,
            engine.options.shutdown_grace,
        )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    freeze_startup_heap()
    try:
        await engine.run_worker(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


# --- trigger ---------------------------------------------------------------------------------


def _parse_input(text: str | None) -> Any:
    if text is None:
        return None
    source = "--input"
    if text.startswith("@"):
        path = Path(text[1:])
        source = f"--input file {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read {source}: {exc.strerror}", EXIT_USAGE) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source} is not valid JSON: {exc}", EXIT_USAGE) from None


@app.command()
def trigger(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(metavar="TASK", help="The task id.")],
    input_text: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            help="The input as JSON (or @file.json). Omitted: no input (null).",
        ),
    ] = None,
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app",
            envvar="PERDURE_APP",
            help="module:engine defining the task, to validate the input against its "
            "declared type. Without it the task must be known from a worker's catalog.",
        ),
    ] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it may start.")] = None,
    priority: Annotated[int, typer.Option(help="Higher runs first within a queue.")] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="A trigger with a key already used returns the first run."),
    ] = None,
    queue: Annotated[str | None, typer.Option(help="Queue to use instead of the task's.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run to finish; print its output.")
    ] = False,
) -> None:
    """Trigger TASK and print the new run's id."""
    state: State = ctx.obj
    value = _parse_input(input_text)
    if app_spec is not None:
        engine = load_engine(app_spec)
        if state.database_url_explicit:
            override_options(engine, {"database_url": state.database_url})
    else:
        engine = new_engine(state)
    options: dict[str, Any] = {"priority": priority}
    if delay is not None:
        options["delay"] = delay
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    if queue is not None:
        options["queue"] = queue

    async def work(engine: Engine) -> Run | None:
        handle: RunHandle[Any] = await engine.trigger(task, value, **options)
        sys.stdout.write(handle.id + "\n")
        sys.stdout.flush()
        return await handle.wait() if wait else None

    finished = run_with_engine(engine, work)
    if finished is None:
        return
    out = render.console()
    out.print(Text.assemble("status: ", render.status_text(finished.status)))
    if finished.status is RunStatus.COMPLETED:
        out.print(Text("output: " + render.compact_json(finished.output)))
        return
    reason = finished.error.type + ": " + finished.error.message if finished.error else "-"
    raise CliError(f"run {finished.id} ended {finished.status.value}: {reason}")


# --- migrate ---------------------------------------------------------------------------------


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Apply pending database migrations (workers also do it when they start)."""
    state: State = ctx.obj
    engine = new_engine(state)

    async def work(engine: Engine) -> list[int]:
        return await engine.migrate()

    applied = run_with_engine(engine, work)
    where = redact_url(engine.url)
    if applied:
        versions = ", ".join(f"{version:04d}" for version in applied)
        render.console().print(Text(f"applied migrations {versions} to {where}"))
    else:
        render.console().print(Text(f"{where} is up to date"))


# --- entry point -----------------------------------------------------------------------------


def _error_code(exc: PerdureError) -> int:
    if isinstance(exc, RunNotFoundError | TaskNotFoundError):
        return EXIT_FAILURE
    if isinstance(exc, InputValidationError | ConfigurationError | ValueError):
        return EXIT_USAGE
    return EXIT_FAILURE


def _fail(message: str, code: int) -> int:
    # One line: a multi-line message (a driver's, say) is joined rather than cut.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    return code


def _is_click_error(exc: BaseException, name: str) -> bool:
    # typer vendors click in recent versions (older ones use click itself): match the class by
    # name along the MRO instead of importing either module.
    return any(cls.__name__ == name and "click" in cls.__module__ for cls in type(exc).__mro__)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=sys.argv[1:] if argv is None else argv,
            prog_name="perdure",
            standalone_mode=False,
        )
    except CliError as exc:
        return _fail(exc.message, exc.exit_code)
    except PerdureError as exc:
        return _fail(str(exc), _error_code(exc))
    except typer.Abort:
        return _fail("aborted", 130)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as exc:
        if not _is_click_error(exc, "ClickException"):
            raise
        ctx: Any = getattr(exc, "ctx", None)
        message: str = getattr(exc, "format_message")()  # noqa: B009 - typed as Exception
        if _is_click_error(exc, "NoArgsIsHelpError"):
            # The help text: typer's rich help is already printed; click's is the message.
            if message.strip():
                sys.stdout.write(message.rstrip("\n") + "\n")
            return EXIT_USAGE
        if _is_click_error(exc, "UsageError"):
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            return _fail(message + hint, EXIT_USAGE)
        return _fail(message, getattr(exc, "exit_code", EXIT_FAILURE))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
