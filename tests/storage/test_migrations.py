"""Migrations: idempotent, safe under concurrent migrators, and equal across dialects."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from perdure.storage import Storage, make_storage
from perdure.storage.queries import load_migrations, load_queries
from tests.pg import PostgresServer
from tests.storage.factories import open_storage

DIALECTS = ("sqlite", "postgres")
LATEST = max(version for version, _, _ in load_migrations("sqlite"))


#: Statements one dialect alone has, used only where `Database.writes_in_one_statement`.
ONE_STATEMENT_ONLY = {"create_runs_at_once"}


def test_every_dialect_defines_the_same_query_names() -> None:
    names = {dialect: set(load_queries(dialect)) for dialect in DIALECTS}

    assert names["sqlite"] == names["postgres"] - ONE_STATEMENT_ONLY
    assert names["postgres"] >= ONE_STATEMENT_ONLY
    assert {"claim_runs", "applied_migrations", "record_migration"} <= names["sqlite"]


def test_every_dialect_has_the_same_numbered_migrations() -> None:
    ids = {d: [(v, name) for v, name, _ in load_migrations(d)] for d in DIALECTS}

    assert ids["sqlite"] == ids["postgres"]
    assert [v for v, _ in ids["sqlite"]] == list(range(1, LATEST + 1))


async def test_migrating_again_changes_nothing(storage: Storage) -> None:
    assert await storage.schema_version() == LATEST

    assert await storage.migrate() == []
    assert await storage.schema_version() == LATEST


async def test_open_migrates_a_new_database(tmp_path: Path) -> None:
    async with open_storage(f"sqlite:///{tmp_path / 'new.db'}") as storage:
        assert await storage.schema_version() == LATEST


def _sqlite_migrate(url: str) -> list[int]:
    async def run() -> list[int]:
        storage = make_storage(url)
        await storage.open(migrate=False)
        try:
            return await storage.migrate()
        finally:
            await storage.close()

    return asyncio.run(run())


def test_ten_concurrent_migrators_on_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    with ThreadPoolExecutor(max_workers=10) as pool:
        applied = list(pool.map(_sqlite_migrate, [url] * 10))

    assert sorted(v for versions in applied for v in versions) == list(range(1, LATEST + 1))
    with sqlite3.connect(tmp_path / "shared.db") as conn:
        rows = conn.execute("SELECT version FROM perdure_migrations ORDER BY version").fetchall()
    conn.close()
    assert [v for (v,) in rows] == list(range(1, LATEST + 1))


@pytest.mark.postgres
async def test_ten_concurrent_migrators_on_a_fresh_postgres_database(pg_empty_url: str) -> None:
    storages = [make_storage(pg_empty_url) for _ in range(10)]
    try:
        await asyncio.gather(*(s.open(migrate=False) for s in storages))
        applied = await asyncio.gather(*(s.migrate() for s in storages))
        versions = await asyncio.gather(*(s.schema_version() for s in storages))
    finally:
        await asyncio.gather(*(s.close() for s in storages))

    # Each migration ran exactly once, whichever migrator won the advisory lock.
    assert sorted(v for done in applied for v in done) == list(range(1, LATEST + 1))
    assert versions == [LATEST] * 10


def _sqlite_schema(path: Path) -> tuple[dict[str, list[str]], set[str]]:
    with sqlite3.connect(path) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        columns = {t: [row[1] for row in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    conn.close()
    return columns, indexes


@pytest.mark.postgres
async def test_both_dialects_create_the_same_tables_columns_and_indexes(
    tmp_path: Path, pg_url: str, pg_server: PostgresServer
) -> None:
    async with open_storage(f"sqlite:///{tmp_path / 'schema.db'}"):
        pass
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "schema.db")

    rows = pg_server.execute(
        pg_url,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    )
    pg_columns: dict[str, list[str]] = {}
    for table, column in rows:
        pg_columns.setdefault(str(table), []).append(str(column))
    pg_indexes = {
        str(name)
        for (name,) in pg_server.execute(
            pg_url,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname NOT LIKE '%_pkey'",
        )
    }

    assert pg_columns == sqlite_columns
    assert pg_indexes == sqlite_indexes
