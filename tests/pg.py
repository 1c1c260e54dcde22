"""PostgreSQL for tests: one migrated template database per session, cloned per test.

`CREATE DATABASE x TEMPLATE t` copies the migrated schema, so every test gets a private
database without running migrations again. Each clone costs a few hundred milliseconds of
fsync, but clones run in parallel: a few are prepared ahead on worker threads while tests run,
and drops happen in the background. Reusable by every test tier through the fixtures in
`tests/conftest.py` (`pg_server`, `pg_url`, `pg_empty_url`, `backend_url`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from perdure.storage import make_storage

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: How many cloned databases are kept ready ahead of the tests that will use them.
PREFETCH = 4
#: Drops may lag behind under load; past this many pending, a test waits for the oldest.
MAX_PENDING_DROPS = 8


def postgres_url() -> str:
    return os.environ.get("PERDURE_TEST_POSTGRES_URL", DEFAULT_URL)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class PostgresServer:
    """An admin connection to the test server; creates and drops throwaway databases."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._template: str | None = None
        # Separate threads, so slow drops never hold up the clones a test is waiting for.
        self._cloners = ThreadPoolExecutor(max_workers=PREFETCH, thread_name_prefix="pg-clone")
        self._droppers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pg-drop")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []

    @classmethod
    def connect_or_skip(cls) -> PostgresServer:
        """Connect, or skip the test (fail it when `CI` is set: PostgreSQL is required there)."""
        url = postgres_url()
        try:
            psycopg.connect(url, autocommit=True, connect_timeout=3).close()
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"PostgreSQL not reachable at {url} (PERDURE_TEST_POSTGRES_URL): {reason}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        return cls(url)

    def _create(self, name: str, template: str | None = None) -> str:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        # One connection per call: this also runs on the worker threads.
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query)
        return with_database(self.url, name)

    def _drop(self, name: str) -> None:
        # FORCE ends connections a failed test left behind (PostgreSQL 13+).
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @staticmethod
    def _new_name() -> str:
        return f"perdure_test_{uuid.uuid4().hex[:12]}"

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
        if not migrated:
            return self._create(self._new_name())
        template = self.template()
        while len(self._ready) <= PREFETCH:
            self._ready.append(self._cloners.submit(self._create, self._new_name(), template))
        return self._ready.popleft().result()

    def drop_database(self, url: str) -> None:
        """Drop in the background; `close()` waits for every drop."""
        self._drops.append(self._droppers.submit(self._drop, database_name(url)))
        done = [drop for drop in self._drops if drop.done()]
        for drop in done:
            drop.result()  # surface a failed drop
            self._drops.remove(drop)
        while len(self._drops) > MAX_PENDING_DROPS:
            self._drops.pop(0).result()

    def execute(self, url: str, query: str) -> list[tuple[object, ...]]:
        """Run one admin statement on the database at `url` (e.g. to inspect the schema)."""
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(query.encode())
            return cur.fetchall() if cur.description is not None else []

    def close(self) -> None:
        while self._ready:
            self.drop_database(self._ready.popleft().result())
        self._cloners.shutdown()
        self._droppers.shutdown()
        for drop in self._drops:
            drop.result()  # surface a failed drop
        if self._template is not None:
            self._drop(self._template)
            self._template = None


async def _migrate(url: str) -> None:
    storage = make_storage(url)
    await storage.open(migrate=True)
    await storage.close()
