"""Load named SQL from the `.sql` files shipped in the package (`-- name: x` blocks).

A `-- fragment: x` block is SQL that several queries share (e.g. what a claim sets on a run):
it is not a query itself, and a line `-- include: x` in a query stands for it."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_BLOCK = re.compile(r"^--\s*(name|fragment):\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
#: An include may end its query: `-- include: x;` (the `;` ends the statement, as elsewhere).
_INCLUDE = re.compile(r"^(\s*)--\s*include:\s*([a-z_][a-z0-9_]*)\s*;?\s*$")


def parse_queries(text: str) -> dict[str, str]:
    blocks: dict[str, dict[str, list[str]]] = {"name": {}, "fragment": {}}
    parts = _BLOCK.split(text)
    # parts = [preamble, kind1, name1, body1, kind2, name2, body2, ...]
    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        if name in blocks[kind]:
            what = "query" if kind == "name" else "fragment"
            raise ValueError(f"{what} {name!r} is defined twice")
        blocks[kind][name] = body.strip().rstrip(";").splitlines()
    fragments = blocks["fragment"]
    used: set[str] = set()

    def expand(lines: list[str], seen: tuple[str, ...]) -> list[str]:
        out: list[str] = []
        for line in lines:
            include = _INCLUDE.match(line)
            if include is None:
                if not line.lstrip().startswith("--"):
                    out.append(line)
                continue
            indent, name = include.groups()
            if name not in fragments:
                raise ValueError(f"{seen[0]!r} includes {name!r}, which is not a fragment")
            if name in seen:
                raise ValueError(f"fragment {name!r} includes itself")
            used.add(name)
            out.extend(indent + ln for ln in expand(fragments[name], (*seen, name)))
        return out

    queries = {
        name: "\n".join(expand(lines, (name,))).strip().rstrip(";").strip()
        for name, lines in blocks["name"].items()
    }
    if unused := sorted(fragments.keys() - used):
        raise ValueError(f"fragment {unused[0]!r} is never included")
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
