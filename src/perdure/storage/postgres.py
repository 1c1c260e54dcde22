"""PostgreSQL driver: a psycopg 3 async connection pool, plus one LISTEN connection.

Write transactions run at READ COMMITTED on pooled autocommit connections with an explicit
BEGIN/COMMIT. The queries make that safe: claims lock rows with `FOR UPDATE SKIP LOCKED`, and
every other write is a conditional UPDATE that PostgreSQL re-checks on the newest row version
after waiting for a concurrent writer, so two transactions never both move the same run.

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
import json
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

from perdure.core.errors import StorageError
from perdure.storage.database import (
    CHANNEL_CANCEL,
    CHANNEL_FINISHED,
    CHANNEL_WORK,
    Database,
    Params,
    Row,
    Tx,
)
from perdure.storage.queries import load_queries

log = logging.getLogger("perdure.storage.postgres")

#: The PostgreSQL channel every perdure notification travels on.
NOTIFY_CHANNEL = "perdure"
#: PostgreSQL rejects NOTIFY payloads of 8000 bytes or more.
MAX_NOTIFY_BYTES = 7900
#: Key of the transaction-scoped advisory lock that serializes migrators ("perdure" in ASCII).
MIGRATION_LOCK_KEY = 0x70657264757265
#: Opens every write transaction, in one round trip. Write paths (claims, lease sweeps, fenced
#: updates) each walk one index in order; without bitmap scans the planner keeps to that plan
#: even before the runs table was first analyzed, when it guesses a queue holds a handful of
#: rows and would rather bitmap-scan and sort every queued run (15 ms per claim at 20k runs
#: instead of 1 ms). Reads keep the default planner.
BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL enable_bitmapscan = off"
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


_encode_batch = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _batch_params(rows: Sequence[Params], shared: Params | None) -> dict[str, Any]:
    # One JSON text for the whole batch: json_to_recordset types each column in the query,
    # and encoding it here is far cheaper than adapting one parameter per row and column.
    # ensure_ascii=False: the text travels as UTF-8, whatever escapes the server supports.
    params = _adapt(shared or {})
    params["rows"] = _encode_batch(rows)
    return params


class PostgresTx(Tx):
    def __init__(self, conn: Connection, queries: dict[str, LiteralString]) -> None:
        super().__init__()
        self.conn = conn
        self._queries = queries

    def _sql(self, name: str) -> LiteralString:
        try:
            return self._queries[name]
        except KeyError:
            raise StorageError(f"no PostgreSQL query named {name!r}") from None

    async def fetchall(self, name: str, params: Params) -> list[Row]:
        query = self._sql(name)
        try:
            cur = await self.conn.execute(query, _adapt(params))
            if cur.description is None:
                return []
            return await cur.fetchall()
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL query {name!r} failed: {exc}") from exc

    async def execute(self, name: str, params: Params) -> int:
        query = self._sql(name)
        try:
            cur = await self.conn.execute(query, _adapt(params))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL query {name!r} failed: {exc}") from exc
        return cur.rowcount

    async def executemany(self, name: str, params: Sequence[Params]) -> None:
        if not params:
            return
        query = self._sql(name)
        try:
            # psycopg pipelines executemany: one round trip for the whole batch.
            async with self.conn.cursor() as cur:
                await cur.executemany(query, [_adapt(p) for p in params])
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL query {name!r} failed: {exc}") from exc

    async def execute_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> int:
        if not rows:
            return 0
        query = self._sql(name)
        try:
            cur = await self.conn.execute(query, _batch_params(rows, shared))
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL query {name!r} failed: {exc}") from exc
        return cur.rowcount

    async def fetch_batch(
        self, name: str, rows: Sequence[Params], shared: Params | None = None
    ) -> list[Row]:
        if not rows:
            return []
        query = self._sql(name)
        try:
            cur = await self.conn.execute(query, _batch_params(rows, shared))
            return await cur.fetchall()
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL query {name!r} failed: {exc}") from exc


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database (`postgresql://` or `postgres://`;
    libpq environment variables such as PGHOST and PGPASSWORD apply as usual)."""

    dialect = "postgres"

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
        self._queries = cast(dict[str, LiteralString], load_queries(self.dialect))
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

    @asynccontextmanager
    async def _checkout(self) -> AsyncGenerator[Connection]:
        pool = self._require_pool()
        try:
            conn = await pool.getconn(UNREACHABLE_WAIT if self._unreachable else None)
        except psycopg.Error as exc:
            raise StorageError(
                f"no PostgreSQL connection available from the pool (max_size={self.max_size}): "
                f"{exc}"
            ) from exc
        try:
            yield conn
        finally:
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

    async def _begin(self, conn: Connection, lock_key: int | None) -> bool:
        """Open a transaction on `conn`; False when the connection turned out broken."""
        try:
            await conn.execute(BEGIN)
            if lock_key is not None:
                # Held until COMMIT: migrators run one at a time, whatever the process.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
        except psycopg.Error as exc:
            await _rollback_quietly(conn)
            if conn.broken:
                # Expected after a restart; the worker's circuit breaker reports outages.
                log.debug("discarding a broken PostgreSQL connection: %s", exc)
                return False
            raise StorageError(f"PostgreSQL BEGIN failed: {exc}") from exc
        return True

    @asynccontextmanager
    async def _transaction(self, lock_key: int | None = None) -> AsyncGenerator[Tx]:
        # A pooled connection found broken at BEGIN (e.g. after a PostgreSQL restart) goes
        # back to the pool, which discards it, and the next one is tried: nothing ran on it.
        for _ in range(self.max_size + 1):
            async with self._checkout() as conn:
                if not await self._begin(conn, lock_key):
                    continue
                tx = PostgresTx(conn, self._queries)
                try:
                    yield tx
                except BaseException:
                    await _rollback_quietly(conn)
                    raise
                await self._commit(conn, tx)
            break
        else:
            raise StorageError(
                f"PostgreSQL BEGIN failed on {self.max_size + 1} connections in a row; "
                f"is the server at {redact_url(self.url)} up?"
            )
        self._dispatch(tx.notifications)

    async def _commit(self, conn: Connection, tx: PostgresTx) -> None:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            # PostgreSQL would turn this COMMIT into a silent ROLLBACK.
            await _rollback_quietly(conn)
            raise StorageError(
                "PostgreSQL transaction was aborted by an earlier failed statement and "
                "has been rolled back; nothing was written"
            )
        try:
            if tx.notifications:
                # One NOTIFY per transaction: NOTIFY serializes commits on a global lock. It
                # travels with the COMMIT as one simple query: one round trip for both (a
                # failed NOTIFY aborts the transaction and skips the COMMIT).
                payload = encode_notifications(self.origin, tx.notifications)
                await conn.execute(
                    sql.SQL("SELECT pg_notify({}, {}); COMMIT").format(
                        sql.Literal(self.channel), sql.Literal(payload)
                    )
                )
            else:
                await conn.commit()
        except psycopg.Error as exc:
            await _rollback_quietly(conn)
            raise StorageError(f"PostgreSQL COMMIT failed: {exc}") from exc

    @asynccontextmanager
    async def _autocommit(self) -> AsyncGenerator[Tx]:
        # At READ COMMITTED each statement sees its own snapshot even inside a transaction, so
        # BEGIN/COMMIT around reads would add two round trips and no consistency.
        async with self._checkout() as conn:
            tx = PostgresTx(conn, self._queries)
            yield tx
            if tx.notifications:
                payload = encode_notifications(self.origin, tx.notifications)
                try:
                    await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
                except psycopg.Error as exc:
                    raise StorageError(f"PostgreSQL NOTIFY failed: {exc}") from exc
        self._dispatch(tx.notifications)

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        return self._transaction()

    def reader(self) -> AbstractAsyncContextManager[Tx]:
        return self._autocommit()

    def migration_transaction(self) -> AbstractAsyncContextManager[Tx]:
        return self._transaction(lock_key=MIGRATION_LOCK_KEY)

    async def run_script(self, tx: Tx, sql: str) -> None:
        if not isinstance(tx, PostgresTx):
            raise StorageError("run_script needs a transaction of this PostgreSQL database")
        try:
            # Without parameters psycopg uses the simple protocol, which runs every statement
            # of the string; the file ships with the package, so the cast is safe.
            await tx.conn.execute(cast(LiteralString, sql))
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


def encode_notifications(origin: str, notifications: Sequence[tuple[str, str]]) -> str:
    """One compact JSON payload for a transaction's notifications, under PostgreSQL's limit.

    Too large a batch collapses to its distinct channels with empty payloads ("look again")."""
    payload = _dumps({"o": origin, "n": [list(pair) for pair in notifications]})
    if len(payload.encode()) < MAX_NOTIFY_BYTES:
        return payload
    channels = list(dict.fromkeys(channel for channel, _ in notifications))
    while True:
        payload = _dumps({"o": origin, "n": [[channel, ""] for channel in channels]})
        if len(payload.encode()) < MAX_NOTIFY_BYTES or not channels:
            return payload
        channels.pop()


def decode_notifications(payload: str, own_origin: str) -> list[tuple[str, str]]:
    """Notifications in a payload sent by another instance; [] for our own or a foreign one."""
    try:
        data: Any = json.loads(payload)
    except ValueError:
        log.debug("ignoring a malformed notification payload: %.100r", payload)
        return []
    if not isinstance(data, dict):
        return []
    message = cast(dict[str, Any], data)
    pairs: Any = message.get("n")
    if message.get("o") == own_origin or not isinstance(pairs, list):
        return []
    notifications: list[tuple[str, str]] = []
    for pair in cast(list[Any], pairs):
        if isinstance(pair, list) and len(cast(list[Any], pair)) == 2:
            channel, body = cast(list[Any], pair)
            if isinstance(channel, str) and isinstance(body, str):
                notifications.append((channel, body))
    return notifications


def redact_url(url: str) -> str:
    """The URL without its password, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
