"""Storage: one small Protocol, one compact class per backend (SQLite, PostgreSQL)."""

from __future__ import annotations

from dataclasses import dataclass

from playledger.errors import StoreError
from playledger.store.base import (
    EventFilter,
    EventRow,
    HostRun,
    HostSummary,
    HostTotals,
    IngestResult,
    PoolStats,
    PurgeResult,
    RunLag,
    RunQuery,
    RunRow,
    Store,
    TokenRow,
)


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def open_store(url: str, busy_timeout: float = 5.0, pool_size: int = 4) -> Store:
    """Open the store named by `url`: a SQLite file path, or a postgresql:// URL.

    `pool_size` bounds PostgreSQL connections (PLAYLEDGER_DB_POOL_SIZE); SQLite has one writer.
    """
    if is_postgres(url):
        from playledger.store.postgres import PostgresStore  # only when chosen

        return PostgresStore(url, busy_timeout=busy_timeout, pool_size=pool_size)
    from playledger.store.sqlite import SQLiteStore

    return SQLiteStore(url, busy_timeout=busy_timeout)


@dataclass(frozen=True)
class UpgradeResult:
    before: int  # schema version found (0: none)
    after: int
    applied: list[int]


def upgrade_store(url: str) -> UpgradeResult:
    """`playledger db upgrade`: apply the missing schema migrations (SQLite does it on open)."""
    if is_postgres(url):
        from playledger.store.postgres import upgrade_schema

        before, applied = upgrade_schema(url)
        return UpgradeResult(before, max([before, *applied]), applied)
    import sqlite3
    from pathlib import Path

    from playledger.store.sqlite import SCHEMA_VERSION, SQLiteStore

    before = 0
    if Path(url).expanduser().exists():
        db = sqlite3.connect(Path(url).expanduser())
        try:
            before = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read SQLite store {url}: {exc}") from exc
        finally:
            db.close()
    SQLiteStore(url).close()
    return UpgradeResult(before, SCHEMA_VERSION, list(range(before + 1, SCHEMA_VERSION + 1)))


__all__ = [
    "EventFilter",
    "EventRow",
    "HostRun",
    "HostSummary",
    "HostTotals",
    "IngestResult",
    "PoolStats",
    "PurgeResult",
    "RunLag",
    "RunQuery",
    "RunRow",
    "Store",
    "TokenRow",
    "UpgradeResult",
    "is_postgres",
    "open_store",
    "upgrade_store",
]
