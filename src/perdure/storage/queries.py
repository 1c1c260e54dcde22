"""Load named SQL from the `.sql` files shipped in the package (`-- name: x` blocks)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = sql
    return queries


@cache
def load_queries(dialect: str) -> dict[str, str]:
    text = resources.files("perdure.storage").joinpath("sql", dialect, "queries.sql").read_text()
    return parse_queries(text)


@cache
def load_migrations(dialect: str) -> list[tuple[int, str, str]]:
    """`(version, name, sql)` for every numbered migration file, in order."""
    folder = resources.files("perdure.storage").joinpath("sql", dialect, "migrations")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_([a-z0-9_]+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    found.sort()
    return found
