"""PostgreSQL for tests: one migrated template database per session, cloned per test.

`CREATE DATABASE x TEMPLATE t` copies the migrated schema in milliseconds, so every test gets
a private database without running migrations again. Reusable by every test tier through the
fixtures in `tests/conftest.py` (`pg_server`, `pg_url`, `pg_empty_url`, `backend_url`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from perdure.storage import make_storage

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_url() -> str:
    return os.environ.get("PERDURE_TEST_POSTGRES_URL", DEFAULT_URL)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class PostgresServer:
    """An admin connection to the test server; creates and drops throwaway databases."""

    def __init__(self, url: str, admin: psycopg.Connection) -> None:
        self.url = url
        self._admin = admin
        self._template: str | None = None

    @classmethod
    def connect_or_skip(cls) -> PostgresServer:
        """Connect, or skip the test (fail it when `CI` is set: PostgreSQL is required there)."""
        url = postgres_url()
        try:
            admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"PostgreSQL not reachable at {url} (PERDURE_TEST_POSTGRES_URL): {reason}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return cls(url, admin)

    def _create(self, name: str, template: str | None = None) -> None:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        self._admin.execute(query)

    def _drop(self, name: str) -> None:
        # FORCE ends connections a failed test left behind (PostgreSQL 13+).
        self._admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def template(self) -> str:
        """The name of the migrated template database, created on first use."""
        if self._template is None:
            name = f"perdure_tmpl_{uuid.uuid4().hex[:12]}"
            self._create(name)
            try:
                asyncio.run(_migrate(with_database(self.url, name)))
            except BaseException:
                self._drop(name)
                raise
            self._template = name
        return self._template

    def create_database(self, *, migrated: bool = True) -> str:
        """A new database (a clone of the migrated template, or empty); returns its URL."""
        name = f"perdure_test_{uuid.uuid4().hex[:12]}"
        self._create(name, self.template() if migrated else None)
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        self._drop(database_name(url))

    def execute(self, url: str, query: str) -> list[tuple[object, ...]]:
        """Run one admin statement on the database at `url` (e.g. to inspect the schema)."""
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description is not None else []

    def close(self) -> None:
        try:
            if self._template is not None:
                self._drop(self._template)
                self._template = None
        finally:
            self._admin.close()


async def _migrate(url: str) -> None:
    storage = make_storage(url)
    await storage.open(migrate=True)
    await storage.close()
