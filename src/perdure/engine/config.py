"""Engine options: one table drives constructor keywords, `PERDURE_*` environment variables
and CLI flags. Precedence: explicit keyword > environment variable > default."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from perdure.core.clock import Clock, SystemClock
from perdure.core.errors import InvalidOptionError
from perdure.core.retry import to_seconds

DEFAULT_DATABASE_URL = "sqlite:///.perdure/perdure.db"
ENV_PREFIX = "PERDURE_"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise InvalidOptionError(name, "an integer >= 1", value) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidOptionError(name, "an integer >= 1", value)
    return value


def _duration(name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidOptionError(name, "a number of seconds", value) from None
    seconds = to_seconds(value, name)
    if seconds <= 0:
        raise InvalidOptionError(name, "a duration > 0 (seconds or timedelta)", value)
    return seconds


def _queues(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items: list[Any] = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(q).strip() for q in items if str(q).strip())
    if not names:
        raise InvalidOptionError(name, "a non-empty list of queue names", value)
    return names


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidOptionError(
            name, "a database URL (postgresql://, sqlite:///, memory://)", value
        )
    return value


@dataclass(frozen=True, slots=True)
class OptionSpec:
    name: str
    parse: Callable[[str, Any], Any]
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("database_url", _url, "database URL; default SQLite at ./.perdure/perdure.db"),
    OptionSpec("concurrency", _positive_int, "attempts run at once by one worker"),
    OptionSpec("queues", _queues, "queues this worker claims from (default: all its tasks')"),
    OptionSpec("lease", _duration, "seconds a claim stays valid without a heartbeat"),
    OptionSpec("heartbeat", _duration, "seconds between lease renewals"),
    OptionSpec("poll_interval", _duration, "seconds between polls for work from other processes"),
    OptionSpec("shutdown_grace", _duration, "seconds running attempts get to finish at shutdown"),
    OptionSpec("max_children", _positive_int, "children one parent may start"),
    OptionSpec("max_payload_bytes", _positive_int, "largest serialized input or output"),
    OptionSpec("max_lost_leases", _positive_int, "lost leases before a run fails"),
)
_SPECS = {spec.name: spec for spec in OPTIONS}


@dataclass(frozen=True, slots=True)
class EngineOptions:
    database_url: str = DEFAULT_DATABASE_URL
    concurrency: int = 100
    queues: tuple[str, ...] | None = None
    lease: float = 30.0
    heartbeat: float = 10.0
    poll_interval: float = 0.5
    shutdown_grace: float = 30.0
    max_children: int = 1000
    max_payload_bytes: int = 1024 * 1024
    max_lost_leases: int = 3
    clock: Clock = field(default_factory=SystemClock)

    @classmethod
    def resolve(
        cls, explicit: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> EngineOptions:
        """Keywords given explicitly win; then `PERDURE_*` variables; then defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in OPTIONS:
            if explicit.get(spec.name) is not None:
                values[spec.name] = spec.parse(spec.name, explicit[spec.name])
            elif spec.env in env and env[spec.env] != "":
                values[spec.name] = spec.parse(spec.env, env[spec.env])
        unknown = set(explicit) - set(_SPECS) - {"clock"}
        if unknown:
            allowed = ", ".join(sorted([*_SPECS, "clock"]))
            raise InvalidOptionError(
                sorted(unknown)[0], f"one of the options {allowed}", explicit[sorted(unknown)[0]]
            )
        clock = explicit.get("clock")
        if clock is not None:
            if not isinstance(clock, Clock):
                raise InvalidOptionError("clock", "an object with a time() method", clock)
            values["clock"] = clock
        options = replace(cls(), **values)
        if options.heartbeat >= options.lease:
            raise InvalidOptionError(
                "heartbeat", f"less than lease ({options.lease:g} s)", options.heartbeat
            )
        return options

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "clock"}


def seconds(value: float | timedelta | None, option: str) -> float | None:
    return None if value is None else to_seconds(value, option)
