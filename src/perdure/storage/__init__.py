"""Storage: the atomic operations on runs, over SQLite or PostgreSQL.

`open_storage(url)` picks the backend from the URL; both run the same operations
(`perdure.storage.store.Storage`) over their own driver and `.sql` files.
"""

from __future__ import annotations

from perdure.core.errors import InvalidOptionError
from perdure.storage.database import CHANNEL_CANCEL, CHANNEL_FINISHED, CHANNEL_WORK, Database
from perdure.storage.store import Storage

__all__ = [
    "CHANNEL_CANCEL",
    "CHANNEL_FINISHED",
    "CHANNEL_WORK",
    "Database",
    "Storage",
    "make_database",
    "make_storage",
]


def make_database(url: str) -> Database:
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from perdure.storage.postgres import PostgresDatabase
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise InvalidOptionError(
                "database url", "an installed backend: pip install 'perdure[postgres]'", url
            ) from exc
        return PostgresDatabase(url)
    if url.startswith(("sqlite://", "memory://")) or "://" not in url:
        from perdure.storage.sqlite import SQLiteDatabase

        return SQLiteDatabase(url)
    raise InvalidOptionError("database url", "postgresql://…, sqlite:///path.db or memory://", url)


def make_storage(url: str) -> Storage:
    return Storage(make_database(url))
