"""Fixtures of the chaos tier: a private PostgreSQL cluster the tests may stop and restart.

One cluster serves the whole session (initdb costs about a second); each test gets a fresh
database on it, and finds the cluster running whatever the previous test did to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.pgcluster import PostgresCluster, private_cluster
from tests.chaos.workers import ChaosWorkers


@pytest.fixture(scope="session")
def pg_cluster_session() -> Iterator[PostgresCluster]:
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_cluster(pg_cluster_session: PostgresCluster) -> Iterator[PostgresCluster]:
    """The private cluster, started; restarted after the test if the test left it down."""
    if not pg_cluster_session.running:
        pg_cluster_session.start()
    yield pg_cluster_session
    if not pg_cluster_session.running:
        pg_cluster_session.start()


@pytest.fixture
def cluster_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the private cluster (perdure migrates it on first open)."""
    return pg_cluster.create_database(f"perdure_chaos_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def workers(cluster_url: str, tmp_path: Path) -> Iterator[ChaosWorkers]:
    """Chaos worker processes on `cluster_url` (none started yet), all killed afterwards."""
    chaos = ChaosWorkers(cluster_url, tmp_path)
    try:
        yield chaos
    finally:
        chaos.stop_all()
        print(chaos.tail())
