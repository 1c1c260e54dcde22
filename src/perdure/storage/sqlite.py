"""SQLite driver: one connection per storage instance, used on the event loop thread.

Statements are short and never wait on user code, so running them inline beats a thread hop.
WAL lets readers in other processes proceed during writes; `BEGIN IMMEDIATE` takes the write
lock up front, so a transaction's reads and its conditional UPDATEs see one consistent state.

Notifications go to this instance's listeners after commit and, for a file database, to the
other instances on the same file through `perdure.storage.wake` (Unix datagram sockets).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from perdure.core.errors import StorageError
from perdure.storage.database import ConflictError, Database, Listener, Params, Row, Tx
from perdure.storage.queries import load_queries
from perdure.storage.wake import Notifications, SocketWake

BUSY_TIMEOUT_MS = 10_000
DEFAULT_PATH = ".perdure/perdure.db"


_SEQUENCES = (list, tuple)


def _adapt(params: Params) -> Params:
    # List parameters travel as JSON arrays and are read back with json_each.
    for value in params.values():
        if isinstance(value, _SEQUENCES):
            return {k: json.dumps(v) if isinstance(v, _SEQUENCES) else v for k, v in params.items()}
    return params


def _rows(cursor: sqlite3.Cursor) -> list[Row]:
    # Cheaper than a row factory: the column names are read once per statement, not per row.
    rows = cursor.fetchall()
    if not rows:
        return []
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


_UNIQUE = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


def _error(name: str, exc: sqlite3.Error) -> StorageError:
    """A failed statement's error; a unique violation (nothing was written) is a
    ConflictError, as on PostgreSQL."""
    message = f"SQLite query {name!r} failed: {exc}"
    unique = getattr(exc, "sqlite_errorname", None) in _UNIQUE
    return ConflictError(message) if unique else StorageError(message)


class SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection, queries: dict[str, str]) -> None:
        super().__init__()
        self._conn = conn
        self._queries = queries

    def _sql(self, name: str) -> str:
        return self._queries[name]

    async def fetchall(self, name: str, params: Params) -> list[Row]:
        try:
            return _rows(self._conn.execute(self._sql(name), _adapt(params)))
        except sqlite3.Error as exc:
            raise _error(name, exc) from exc

    async def execute(self, name: str, params: Params) -> int:
        try:
            return self._conn.execute(self._sql(name), _adapt(params)).rowcount
        except sqlite3.Error as exc:
            raise _error(name, exc) from exc

    async def executemany(self, name: str, params: Sequence[Params]) -> None:
        if not params:
            return
        try:
            self._conn.executemany(self._sql(name), [_adapt(p) for p in params])
        except sqlite3.Error as exc:
            raise _error(name, exc) from exc

    async def execute_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> int:
        if not rows:
            return 0
        # Batch rows hold scalars only (list parameters go in `shared`): no adapting per row.
        common = _adapt(shared) if shared else None
        try:
            cursor = self._conn.executemany(
                self._sql(name), rows if common is None else [{**common, **row} for row in rows]
            )
        except sqlite3.Error as exc:
            raise _error(name, exc) from exc
        return cursor.rowcount

    async def fetch_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> list[Row]:
        common: Params = _adapt(shared) if shared else {}
        query = self._sql(name)
        found: list[Row] = []
        try:
            for row in rows:
                found += _rows(self._conn.execute(query, {**common, **row}))
        except sqlite3.Error as exc:
            raise _error(name, exc) from exc
        return found


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._path, self._memory = _parse_url(url)
        self._conn: sqlite3.Connection | None = None
        self._queries = load_queries("sqlite")
        self._lock = threading.RLock()  # the connection is also reached from worker threads
        #: Marks this instance's wake-ups, as `PostgresDatabase.origin` does its NOTIFYs.
        self.origin = uuid.uuid4().hex
        self._wake: SocketWake | None = None

    @property
    def path(self) -> str:
        return self._path

    @property
    def is_shared(self) -> bool:
        return not self._memory

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            if not self._memory:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # explicit BEGIN/COMMIT only
                check_same_thread=False,
                uri=self._memory,
            )
            if not self._memory:
                _enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self._path!r}: {exc}") from exc
        self._conn = conn
        if not self._memory:
            self._wake = SocketWake(self._path, self.origin, self._dispatch)
            self._listen()

    async def close(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def add_listener(self, listener: Listener) -> None:
        super().add_listener(listener)
        self._listen()

    def _listen(self) -> None:
        """Receive other instances' wake-ups once someone listens (a heartbeat's or a CLI
        command's storage has no listeners and binds no socket)."""
        if self._wake is None or not self._listeners:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # added outside a loop: open() binds when it runs
            return
        self._wake.listen(loop)

    @property
    def wake(self) -> SocketWake | None:
        """The cross-process wake-up channel (None for `memory://` or when closed)."""
        return self._wake

    def _send_and_dispatch(self, notifications: Notifications) -> None:
        if not notifications:
            return
        # Other processes first: the datagram costs microseconds and their worker may be idle.
        # After COMMIT, so a receiver's next read sees what the notification announces.
        if self._wake is not None:
            self._wake.send(notifications)
        self._dispatch(notifications)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(
                "storage is not open; call `await engine.start()` or use it "
                "inside `async with engine:`"
            )
        return self._conn

    @asynccontextmanager
    async def _tx(self, begin: str) -> AsyncGenerator[Tx]:
        conn = self._connection()
        with self._lock:
            try:
                conn.execute(begin)
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite {begin} failed: {exc}") from exc
            tx = SQLiteTx(conn, self._queries)
            try:
                yield tx
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"SQLite COMMIT failed: {exc}") from exc
        self._send_and_dispatch(tx.notifications)

    def transaction(self) -> Any:
        return self._tx("BEGIN IMMEDIATE")

    def reader(self) -> Any:
        return self._tx("BEGIN DEFERRED")

    def statement(self, *, ordered_scans: bool = False) -> Any:
        return self._tx("BEGIN IMMEDIATE")

    def migration_transaction(self) -> Any:
        return self._tx("BEGIN EXCLUSIVE")

    async def run_script(self, tx: Tx, sql: str) -> None:
        conn = self._connection()
        statement = ""
        for line in sql.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                conn.execute(statement)
                statement = ""
        if statement.strip():
            raise StorageError(f"incomplete SQL statement in migration: {statement[:80]!r}")


def _parse_url(url: str) -> tuple[str, bool]:
    """`memory://` → a private in-memory database; `sqlite:///path.db` → a file."""
    if url.startswith("memory://"):
        return f"file:perdure-{uuid.uuid4().hex}?mode=memory&cache=private", True
    # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    path = path.removeprefix("sqlite://")
    return path or DEFAULT_PATH, False


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a file database to WAL. The switch needs an exclusive lock and SQLite does not
    run the busy handler for it, so when several processes open a fresh file at once we retry
    ourselves, within the same budget as the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
