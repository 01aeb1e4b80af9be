"""Storage: one small Protocol, one compact class per backend (SQLite now; PostgreSQL next)."""

from __future__ import annotations

from playledger.store.base import (
    EventFilter,
    EventRow,
    HostSummary,
    IngestResult,
    RunRow,
    Store,
)


def open_store(url: str, busy_timeout: float = 5.0) -> Store:
    """Open the store named by `url` (a SQLite path; PostgreSQL arrives with the server)."""
    if url.startswith(("postgres://", "postgresql://")):
        from playledger.errors import SettingError

        raise SettingError("PostgreSQL stores are not available in this version; use a file path")
    from playledger.store.sqlite import SQLiteStore

    return SQLiteStore(url, busy_timeout=busy_timeout)


__all__ = [
    "EventFilter",
    "EventRow",
    "HostSummary",
    "IngestResult",
    "RunRow",
    "Store",
    "open_store",
]
