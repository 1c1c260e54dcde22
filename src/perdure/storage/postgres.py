"""PostgreSQL driver: a psycopg 3 async connection pool, plus one LISTEN connection.

Write transactions run at READ COMMITTED on pooled autocommit connections with an explicit
BEGIN/COMMIT. The queries make that safe: claims lock rows with `FOR UPDATE SKIP LOCKED`, and
every other write is a conditional UPDATE that PostgreSQL re-checks on the newest row version
after waiting for a concurrent writer, so two transactions never both move the same run.
A write that fits in one statement (data-modifying WITH: the records of durable steps) runs
without BEGIN/COMMIT (`statement()`): autocommit makes it atomic on its own, in one round trip.

Notifications queued on a transaction go out as ONE `pg_notify` just before COMMIT (NOTIFY
takes a global lock at commit, so one small payload per transaction), and are also dispatched
to this instance's listeners after commit. A dedicated LISTEN connection dispatches the other
instances' notifications, skipping our own by origin id. An empty payload means "something
happened on this channel, look again": it is what a listener receives when a batch was too
large to describe, and after the LISTEN connection reconnects (anything sent meanwhile was
missed). Notifications are a latency optimisation; callers must still poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, LiteralString, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection, IsolationLevel, sql
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, TupleRow, dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic_core import to_json

from perdure.core.errors import StorageError
from perdure.storage.database import (
    CHANNEL_CANCEL,
    CHANNEL_FINISHED,
    CHANNEL_WORK,
    ConflictError,
    Database,
    Params,
    Row,
    Tx,
)
from perdure.storage.notifications import decode_notifications, encode_notifications
from perdure.storage.queries import load_queries

log = logging.getLogger("perdure.storage.postgres")

#: The PostgreSQL channel every perdure notification travels on.
NOTIFY_CHANNEL = "perdure"
#: Key of the transaction-scoped advisory lock that serializes migrators ("perdure" in ASCII).
MIGRATION_LOCK_KEY = 0x70657264757265
#: (name for error messages, SQL, parameters) of one statement of a pipeline.
Statement: TypeAlias = tuple[str, LiteralString, Params | None]
#: Opens every write transaction (sent with its first statement). Write paths (claims, lease
#: sweeps, fenced updates) each walk one index in order; without bitmap scans the planner keeps
#: to that plan even before the runs table was first analyzed, when it guesses a queue holds a
#: handful of rows and would rather bitmap-scan and sort every queued run (15 ms per claim at
#: 20k runs instead of 1 ms). Reads keep the default planner.
_BEGIN: tuple[Statement, ...] = (
    ("begin", "BEGIN ISOLATION LEVEL READ COMMITTED", None),
    ("begin", "SET LOCAL enable_bitmapscan = off", None),
)
#: The same planner for autocommit statements (`statement(ordered_scans=True)`): the setting
#: holds until the implicit transaction of the pipeline it opens ends (SET LOCAL would warn).
_ORDERED_SCANS: tuple[Statement, ...] = (
    ("planner", "SELECT set_config('enable_bitmapscan', 'off', true)", None),
)
#: Backoff of the LISTEN connection's reconnect attempts, in seconds.
RECONNECT_MIN_DELAY = 0.1
RECONNECT_MAX_DELAY = 10.0
#: How long a caller waits for a pooled connection while the server is known to be
#: unreachable (instead of the pool's 30 s): it fails fast, and the worker's circuit breaker
#: backs off and reports the outage.
UNREACHABLE_WAIT = 1.0

Connection: TypeAlias = AsyncConnection[DictRow]
ListenConnection: TypeAlias = AsyncConnection[TupleRow]
_EVERY_CHANNEL = (CHANNEL_WORK, CHANNEL_FINISHED, CHANNEL_CANCEL)


def _adapt(params: Params) -> dict[str, Any]:
    # Tuples (e.g. status lists from perdure.core.statuses) become lists, i.e. PG arrays.
    return {
        k: list(cast(tuple[Any, ...], v)) if isinstance(v, tuple) else v for k, v in params.items()
    }


def _batch_params(rows: Sequence[Params], shared: Params | None) -> dict[str, Any]:
    # One JSON text for the whole batch: json_to_recordset types each column in the query,
    # and encoding it here is far cheaper than adapting one parameter per row and column.
    # pydantic-core's encoder (4-5x the stdlib's on these rows of scalars) writes UTF-8
    # unescaped: the text travels as UTF-8, whatever escapes the server supports.
    params = _adapt(shared or {})
    params["rows"] = to_json(rows).decode()
    return params


class PostgresTx(Tx):
    """One transaction (or, with nothing to open, a run of autocommit statements) on a pooled
    connection taken at its first statement.

    Round trips are the cost that matters here, so statements travel in pipelines: BEGIN goes
    with the transaction's first statement, and writes whose results nobody reads (`defer`,
    e.g. event rows) wait for the next statement or for COMMIT and travel with it. A claim or
    an outcome batch thus costs two round trips instead of five."""

    def __init__(
        self, db: PostgresDatabase, opening: Sequence[Statement], *, begins: bool = True
    ) -> None:
        super().__init__()
        self._begins = begins and bool(opening)  # `opening` begins a transaction
        self._db = db
        self._queries = db.queries
        self._conn: Connection | None = None
        self._opening: list[Statement] = list(opening)  # sent with the first batch
        self._deferred: list[Statement] = []
        self._open = False  # a transaction was begun on the server
        self._notified = False  # a statement sent the notifications (no NOTIFY at commit)

    def _sql(self, name: str) -> LiteralString:
        try:
            return self._queries[name]
        except KeyError:
            raise StorageError(f"no PostgreSQL query named {name!r}") from None

    async def connection(self) -> Connection:
        """The connection, with everything queued so far sent (for raw SQL)."""
        await self._send([])
        assert self._conn is not None
        return self._conn

    async def _send(
        self, tail: Sequence[Statement], *, replayable: bool = True
    ) -> list[psycopg.AsyncCursor[DictRow]]:
        """Send what is queued, then `tail`, in one round trip; returns `tail`'s cursors.

        A connection found broken in the batch that opens the transaction ran nothing that
        survives (the server rolled back with the session), so the batch is replayed on
        another pooled connection: what PostgreSQL restarts leave behind in the pool. Never
        a batch holding COMMIT: its reply may be what was lost."""
        batch = [*self._opening, *self._deferred, *tail]
        first = replayable and (self._conn is None or bool(self._opening))
        for _ in range(self._db.max_size + 1):
            if self._conn is None:
                self._conn = await self._db.acquire()
            conn = self._conn
            try:
                cursors = await self._execute(conn, batch)
            except psycopg.Error as exc:
                stale = _stale_plan(exc)
                if stale:
                    # Its prepared statements were planned before a schema change (a newer
                    # version's migration added a column): PostgreSQL refuses them for good on
                    # this connection. Closed, the pool replaces it; a new one prepares anew.
                    log.info("replacing a connection whose prepared plans predate a schema change")
                    await conn.close()
                if first and (conn.broken or stale):
                    # Broken: expected after a restart (the worker's circuit breaker reports
                    # outages). Stale: refused before running, the batch's transaction rolled
                    # back. Either way the batch goes again on another connection.
                    log.debug("discarding a broken PostgreSQL connection: %s", exc)
                    await self.release()
                    self.replayed = True
                    continue
                names = ", ".join(dict.fromkeys(repr(name) for name, _, _ in batch[-8:]))
                raise _error(f"PostgreSQL query {names} failed: {exc}", exc) from exc
            break
        else:
            raise StorageError(
                f"PostgreSQL connections failed {self._db.max_size + 1} times in a row; "
                f"is the server at {redact_url(self._db.url)} up?"
            )
        self._open = self._open or (self._begins and bool(self._opening))
        self._opening.clear()
        self._deferred.clear()
        return cursors[len(cursors) - len(tail) :] if tail else []

    @staticmethod
    async def _execute(
        conn: Connection, batch: Sequence[Statement]
    ) -> list[psycopg.AsyncCursor[DictRow]]:
        if len(batch) == 1:
            _, query, params = batch[0]
            return [await conn.execute(query, params)]
        cursors: list[psycopg.AsyncCursor[DictRow]] = []
        if batch:
            async with conn.pipeline():
                for _, query, params in batch:
                    cursors.append(await conn.execute(query, params))
        return cursors

    async def _one(self, name: str, params: Params) -> psycopg.AsyncCursor[DictRow]:
        (cur,) = await self._send([(name, self._sql(name), _adapt(params))])
        return cur

    async def fetchall(self, name: str, params: Params) -> list[Row]:
        cur = await self._one(name, params)
        try:
            return [] if cur.description is None else await cur.fetchall()
        except psycopg.Error as exc:
            raise _error(f"PostgreSQL query {name!r} failed: {exc}", exc) from exc

    async def execute(self, name: str, params: Params) -> int:
        return (await self._one(name, params)).rowcount

    async def executemany(self, name: str, params: Sequence[Params]) -> None:
        if params:
            query = self._sql(name)
            await self._send([(name, query, _adapt(p)) for p in params])

    async def execute_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> int:
        if not rows:
            return 0
        (cur,) = await self._send([(name, self._sql(name), _batch_params(rows, shared))])
        return cur.rowcount

    async def fetch_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> list[Row]:
        if not rows:
            return []
        (cur,) = await self._send([(name, self._sql(name), _batch_params(rows, shared))])
        try:
            return await cur.fetchall()
        except psycopg.Error as exc:
            raise _error(f"PostgreSQL query {name!r} failed: {exc}", exc) from exc

    async def fetch_each(self, statements: Sequence[tuple[str, Params]]) -> list[list[Row]]:
        cursors = await self._send([(n, self._sql(n), _adapt(p)) for n, p in statements])
        try:
            return [[] if c.description is None else await c.fetchall() for c in cursors]
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL queries failed: {exc}") from exc

    async def defer_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> None:
        if rows:
            self._deferred.append((name, self._sql(name), _batch_params(rows, shared)))

    def notifications_in_statement(self) -> dict[str, Any]:
        self._notified = True
        if not self.notifications:
            return {"notify_channel": None, "notify_payload": None}
        payload = encode_notifications(self._db.origin, self.notifications)
        return {"notify_channel": self._db.channel, "notify_payload": payload}

    # --- ending ------------------------------------------------------------------------------

    async def commit(self) -> None:
        """COMMIT with whatever is still queued and the transaction's one NOTIFY."""
        tail: list[Statement] = []
        if self.notifications and not self._notified:
            # One NOTIFY per transaction: NOTIFY serializes commits on a global lock.
            payload = encode_notifications(self._db.origin, self.notifications)
            tail.append(
                ("notify", "SELECT pg_notify(%(c)s, %(p)s)", {"c": self._db.channel, "p": payload})
            )
        if not self._open and not (self._begins and self._opening) and not self._deferred:
            if tail:  # nothing was written: the notification alone, in autocommit
                await self._send(tail)
            return
        conn = self._conn
        if conn is not None and conn.info.transaction_status == TransactionStatus.INERROR:
            # PostgreSQL would turn this COMMIT into a silent ROLLBACK.
            await self.rollback()
            raise StorageError(
                "PostgreSQL transaction was aborted by an earlier failed statement and "
                "has been rolled back; nothing was written"
            )
        if self._open or (self._begins and self._opening):
            tail.append(("commit", "COMMIT", None))
        try:
            await self._send(tail, replayable=False)
        except StorageError as exc:
            await self.rollback()
            raise StorageError(f"PostgreSQL COMMIT failed: {exc}") from exc.__cause__

    async def rollback(self) -> None:
        self._opening.clear()
        self._deferred.clear()
        conn = self._conn
        # Also when a batch that opened the transaction was cut short (e.g. cancelled at
        # shutdown): BEGIN may have run on the server before the reply arrived.
        if conn is not None and (
            self._open or conn.info.transaction_status != TransactionStatus.IDLE
        ):
            await _rollback_quietly(conn)
        self._open = False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._db.release(conn)


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database (`postgresql://` or `postgres://`;
    libpq environment variables such as PGHOST and PGPASSWORD apply as usual)."""

    dialect = "postgres"
    writes_in_one_statement = True

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        channel: str = NOTIFY_CHANNEL,
    ) -> None:
        super().__init__()
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.channel = channel
        #: Marks this instance's notifications so its own LISTEN connection skips them.
        self.origin = uuid.uuid4().hex
        # The SQL comes from the package's own .sql files, never from user input.
        self.queries = cast(dict[str, LiteralString], load_queries(self.dialect))
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listen_conn: ListenConnection | None = None
        self._listen_task: asyncio.Task[None] | None = None
        #: Set when a connection was lost; cleared when a pooled connection works again.
        self._unreachable = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        # LISTEN first: a failed direct connection reports libpq's own reason (bad host,
        # password, missing database), where a pool would only report a timeout.
        listen_conn = await self._connect_listener()
        pool = AsyncConnectionPool(
            self.url,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            name="perdure",
            connection_class=AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except BaseException as exc:
            await pool.close()
            await listen_conn.close()
            if isinstance(exc, psycopg.Error):
                raise StorageError(
                    f"cannot open a connection pool to PostgreSQL at {redact_url(self.url)}: {exc}"
                ) from exc
            raise
        self._pool = pool
        self._listen_conn = listen_conn
        self._listen_task = asyncio.create_task(self._listen_loop(), name="perdure-listen")

    async def close(self) -> None:
        task, self._listen_task = self._listen_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # the task closes its own connection on the way out
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _require_pool(self) -> AsyncConnectionPool[Connection]:
        if self._pool is None:
            raise StorageError(
                "storage is not open; call `await engine.start()` or use it "
                "inside `async with engine:`"
            )
        return self._pool

    # --- transactions ------------------------------------------------------------------------

    async def acquire(self) -> Connection:
        pool = self._require_pool()
        try:
            return await pool.getconn(UNREACHABLE_WAIT if self._unreachable else None)
        except psycopg.Error as exc:
            raise StorageError(
                f"no PostgreSQL connection available from the pool (max_size={self.max_size}): "
                f"{exc}"
            ) from exc

    async def release(self, conn: Connection) -> None:
        pool = self._require_pool()
        back = self._unreachable and not conn.broken
        self._unreachable = conn.broken
        # The pool discards a connection left broken or mid-query and rolls back any
        # transaction still open, so a failed block never leaks state to the next user.
        await pool.putconn(conn)
        if back:
            # The server is back: weed out the idle connections its outage broke now,
            # instead of failing the next callers that would pick them.
            with contextlib.suppress(psycopg.Error):
                await pool.check()

    @asynccontextmanager
    async def _transaction(
        self, opening: Sequence[Statement], *, begins: bool = True
    ) -> AsyncGenerator[Tx]:
        tx = PostgresTx(self, opening, begins=begins)
        try:
            try:
                yield tx
            except BaseException:
                await tx.rollback()
                raise
            await tx.commit()
        finally:
            await tx.release()
        self._dispatch(tx.notifications)

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        return self._transaction(_BEGIN)

    def reader(self) -> AbstractAsyncContextManager[Tx]:
        # At READ COMMITTED each statement sees its own snapshot even inside a transaction, so
        # BEGIN/COMMIT around reads would add two round trips and no consistency.
        return self._transaction(())

    def statement(self, *, ordered_scans: bool = False) -> AbstractAsyncContextManager[Tx]:
        # Autocommit: each write statement commits on its own, all of it or nothing. A first
        # statement found on a broken pooled connection is replayed on another (`_send`);
        # callers of write statements must recognise their own write (steps.py does).
        return self._transaction(_ORDERED_SCANS if ordered_scans else (), begins=False)

    def migration_transaction(self) -> AbstractAsyncContextManager[Tx]:
        # The advisory lock is held until COMMIT: migrators run one at a time, in any process.
        lock: Statement = ("lock", "SELECT pg_advisory_xact_lock(%(k)s)", {"k": MIGRATION_LOCK_KEY})
        return self._transaction((*_BEGIN, lock))

    async def run_script(self, tx: Tx, sql: str) -> None:
        if not isinstance(tx, PostgresTx):
            raise StorageError("run_script needs a transaction of this PostgreSQL database")
        conn = await tx.connection()
        try:
            # Without parameters psycopg uses the simple protocol, which runs every statement
            # of the string; the file ships with the package, so the cast is safe.
            await conn.execute(cast(LiteralString, sql))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL migration script failed: {exc}") from exc

    # --- LISTEN ------------------------------------------------------------------------------

    async def _connect_listener(self) -> ListenConnection:
        try:
            conn = await AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {redact_url(self.url)}: {exc}"
            ) from exc
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"PostgreSQL LISTEN {self.channel} failed: {exc}") from exc
            raise
        return conn

    async def _listen_loop(self) -> None:
        """Dispatch other instances' notifications until cancelled; reconnect on failure.

        Never raises (except cancellation): a lost connection costs latency, not correctness.
        """
        delay = RECONNECT_MIN_DELAY
        try:
            while True:
                try:
                    if self._listen_conn is None:
                        self._listen_conn = await self._connect_listener()
                        delay = RECONNECT_MIN_DELAY
                        log.info("PostgreSQL LISTEN connection re-established")
                        self._dispatch_safely([(channel, "") for channel in _EVERY_CHANNEL])
                    async for note in self._listen_conn.notifies():
                        notifications = decode_notifications(note.payload, self.origin)
                        if notifications:
                            self._dispatch_safely(notifications)
                    raise StorageError("the LISTEN connection stopped delivering notifications")
                except Exception as exc:  # the loop must outlive any failure
                    self._unreachable = True  # usually the first to notice a lost server
                    # One line per outage, not one per reconnect attempt.
                    log.log(
                        logging.INFO if delay == RECONNECT_MIN_DELAY else logging.DEBUG,
                        "PostgreSQL LISTEN connection failed (%s); reconnecting in %.1fs "
                        "(until then, work is found by polling)",
                        " ".join(str(exc).split()),
                        delay,
                    )
                    await self._close_listen_conn()
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, RECONNECT_MAX_DELAY)
        finally:
            await self._close_listen_conn()

    async def _close_listen_conn(self) -> None:
        conn, self._listen_conn = self._listen_conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                log.debug("closing the LISTEN connection failed", exc_info=True)

    def _dispatch_safely(self, notifications: list[tuple[str, str]]) -> None:
        try:
            self._dispatch(notifications)
        except Exception:
            log.exception("a notification listener failed")


def _stale_plan(exc: psycopg.Error) -> bool:
    """A prepared statement whose result columns changed under it (`SELECT *`, `RETURNING *`
    after `ALTER TABLE … ADD COLUMN`)."""
    return isinstance(exc, psycopg.errors.FeatureNotSupported) and "cached plan" in str(exc)


def _error(message: str, exc: psycopg.Error) -> StorageError:
    """The StorageError for a failed statement; a unique violation (nothing was written) is a
    ConflictError."""
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return ConflictError(message)
    return StorageError(message)


async def _configure(conn: Connection) -> None:
    # Explicit, so a server-wide default_transaction_isolation cannot change the semantics.
    await conn.set_isolation_level(IsolationLevel.READ_COMMITTED)


async def _rollback_quietly(conn: Connection) -> None:
    # The connection may be broken or mid-query (e.g. after a cancellation); the pool then
    # discards it on return, so a failed ROLLBACK here loses nothing.
    try:
        await conn.rollback()
    except psycopg.Error:
        log.debug("ROLLBACK failed; the pool will discard the connection", exc_info=True)


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
