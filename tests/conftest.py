"""Fixtures shared by every test tier: backends, and throwaway PostgreSQL databases.

`backend_url` is parametrized over every storage backend ("sqlite" file, "memory",
"postgres"); each test gets a fresh, migrated, private database. PostgreSQL comes from
PERDURE_TEST_POSTGRES_URL and is skipped when unreachable unless CI is set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("memory", id="memory"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer.connect_or_skip()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database, dropped after the test."""
    url = pg_server.create_database()
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture
def pg_empty_url(pg_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh PostgreSQL database with no schema at all, dropped after the test."""
    url = pg_server.create_database(migrated=False)
    try:
        yield url
    finally:
        pg_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name: "sqlite" (a file), "memory" or "postgres"."""
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database URL for `backend`, private to this test (migrated on PostgreSQL)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'perdure.db'}"
    if backend == "memory":
        return "memory://"
    return str(request.getfixturevalue("pg_url"))
