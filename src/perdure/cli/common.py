"""What every command shares: the global state, one-line errors, engines and option parsing."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from perdure.engine.config import OPTIONS, EngineOptions
from perdure.engine.engine import Engine

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2

#: Worker options that are flags of `perdure worker` (the database URL is a global option).
WORKER_OPTIONS = tuple(spec for spec in OPTIONS if spec.name != "database_url")


class CliError(Exception):
    """Reported as one line `error: …` on stderr, with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        self.message = message
        self.exit_code = exit_code
        super().__init__(message)


@dataclass(slots=True)
class State:
    """Global options, shared by every command through the click context."""

    database_url: str | None = None
    #: True when --database-url was given on the command line (not only by the environment):
    #: then it also overrides the URL of an engine imported with an app.
    database_url_explicit: bool = False


def new_engine(state: State) -> Engine:
    """An engine for commands that take no app: the global --database-url, or the default."""
    return Engine(state.database_url)


def run_with_engine(engine: Engine, work: Callable[[Engine], Awaitable[T]]) -> T:
    """Run `work(engine)` on a fresh event loop and close the engine afterwards."""

    async def body() -> T:
        try:
            return await work(engine)
        finally:
            await engine.close()

    return run(body())


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def load_engine(spec: str) -> Engine:
    """Import `module:attr` (with the working directory on `sys.path`) and return the Engine."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(
            f"invalid app {spec!r}; expected 'module:attribute', e.g. 'myapp.tasks:engine'",
            EXIT_USAGE,
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing app module is a usage error; a failing import inside the user's code
        # propagates with its traceback, which is what its author needs to see.
        if exc.name is None or not _is_prefix(exc.name, module_name):
            raise
        raise CliError(
            f"cannot import module {module_name!r} (from app {spec!r}): {exc}; run from the "
            "directory that contains it or add that directory to PYTHONPATH",
            EXIT_USAGE,
        ) from None
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attr!r} (from app {spec!r})",
                EXIT_USAGE,
            ) from None
    if not isinstance(value, Engine):
        raise CliError(
            f"{spec!r} is a {type(value).__name__}, not a perdure Engine; point at the "
            "variable that holds `Engine(...)`",
            EXIT_USAGE,
        )
    return value


def _is_prefix(missing: str, module_name: str) -> bool:
    return module_name == missing or module_name.startswith(missing + ".")


def override_options(engine: Engine, overrides: Mapping[str, Any]) -> None:
    """Apply command-line options over an imported engine's resolved options.

    Options are resolved when the engine is constructed; flags given on the command line win
    over both its keywords and the environment, so they replace the resolved values here,
    before the engine opens a connection or starts a worker."""
    if not overrides:
        return
    parsed: dict[str, Any] = {}
    for name, value in overrides.items():
        spec = next(spec for spec in OPTIONS if spec.name == name)
        parsed[name] = spec.parse("--" + name.replace("_", "-"), value)
    merged: dict[str, Any] = {**engine.options.as_dict(), **parsed}
    merged["clock"] = engine.options.clock
    engine.options = EngineOptions.resolve(merged)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for display."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))
