"""The driver layer: a named-query connection and transactions. Backends differ only here;
the operations in `perdure.storage.runs` are written once on top of it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from perdure.core.errors import StorageError

Row = dict[str, Any]
Params = Mapping[str, Any]
Listener = Callable[[str, str], None]

#: Notification channels: new or due work, a finished run, a cancelled run.
CHANNEL_WORK = "work"
CHANNEL_FINISHED = "finished"
CHANNEL_CANCEL = "cancel"


class ConflictError(StorageError):
    """A statement hit a unique constraint (e.g. a step position already recorded); it
    changed nothing."""


class Tx(ABC):
    """One transaction: run named queries, queue notifications sent on commit."""

    def __init__(self) -> None:
        self.notifications: list[tuple[str, str]] = []
        #: PostgreSQL: a first batch found on a broken pooled connection was sent again on
        #: another. In autocommit (`Database.statement`) its first sending may have committed.
        self.replayed = False

    @abstractmethod
    async def fetchall(self, name: str, params: Params) -> list[Row]: ...

    @abstractmethod
    async def execute(self, name: str, params: Params) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abstractmethod
    async def executemany(self, name: str, params: Sequence[Params]) -> None: ...

    @abstractmethod
    async def execute_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> int:
        """Run a batch statement for every row of `rows` (each with the `shared` parameters
        too); returns the number of rows it changed. Rows hold scalar values; list
        parameters go in `shared`.

        Batch statements are written per dialect with the same parameter names: SQLite runs
        the statement once per row (no round trips to save); PostgreSQL runs it once for the
        whole batch, the rows arriving as one JSON array in the parameter `rows` (read with
        `json_to_recordset`), so a batch costs one statement and one round trip."""

    @abstractmethod
    async def fetch_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> list[Row]:
        """`execute_batch` for a statement with RETURNING: every row it returned."""

    async def fetch_each(self, statements: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        """Run several statements in order; every one's rows. PostgreSQL sends them in one
        round trip (a pipeline); a failure in one skips the rest and raises."""
        return [await self.fetchall(name, params) for name, params in statements]

    async def defer_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> None:
        """`execute_batch` for a write whose result nobody reads. PostgreSQL sends it with the
        transaction's next statement or its COMMIT (no round trip of its own), so its failure
        surfaces there and aborts the transaction all the same; SQLite runs it now."""
        await self.execute_batch(name, rows, shared)

    async def fetchone(self, name: str, params: Params) -> Row | None:
        rows = await self.fetchall(name, params)
        return rows[0] if rows else None

    def notify(self, channel: str, payload: str = "") -> None:
        """Deliver after commit; dropped on rollback."""
        self.notifications.append((channel, payload))

    def notifications_in_statement(self) -> dict[str, Any]:
        """Parameters for a statement that sends this transaction's notifications itself
        (PostgreSQL: `pg_notify(%(notify_channel)s, %(notify_payload)s)`), after which commit
        sends none; call it after the last `notify`. Backends that deliver notifications on
        commit by other means (SQLite) return no parameters."""
        return {}


class Database(ABC):
    dialect: str
    url: str
    #: Whether one statement can write several tables (PostgreSQL's data-modifying WITH), so
    #: `statement()` writes go in one round trip and one commit without BEGIN/COMMIT.
    writes_in_one_statement: bool = False

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _dispatch(self, notifications: list[tuple[str, str]]) -> None:
        for channel, payload in notifications:
            for listener in list(self._listeners):
                listener(channel, payload)

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: READ COMMITTED)."""

    @abstractmethod
    def reader(self) -> AbstractAsyncContextManager[Tx]:
        """Reads that need no write lock."""

    @abstractmethod
    def statement(self, *, ordered_scans: bool = False) -> AbstractAsyncContextManager[Tx]:
        """For writes each made atomic by itself: PostgreSQL runs every statement in
        autocommit (no BEGIN/COMMIT round trips); SQLite wraps the block in BEGIN IMMEDIATE.

        `ordered_scans`: plan the first batch as write transactions are planned (PostgreSQL:
        no bitmap scans, see `postgres._BEGIN`), for statements that walk an index in order
        up to a LIMIT, such as claims."""

    @abstractmethod
    def migration_transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction holding the migration lock (SQLite: EXCLUSIVE; PG: advisory lock)."""

    @abstractmethod
    async def run_script(self, tx: Tx, sql: str) -> None:
        """Run a migration file's statements inside `tx`."""

    @property
    def is_shared(self) -> bool:
        """Whether other processes can see this database (not an in-memory SQLite)."""
        return True
