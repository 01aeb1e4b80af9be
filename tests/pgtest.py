"""The machine's real PostgreSQL for tests: a fresh schema per test, dropped afterwards.

In CI (CI=true) an unreachable server fails the test; on a developer's machine it skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from playledger.store import upgrade_store

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
_down: str | None = None  # why the server was unreachable (asked once per test session)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def admin() -> psycopg.Connection[tuple[Any, ...]]:
    """A direct autocommit connection, or fail (CI) / skip (local) when the server is down."""
    global _down
    if _down is None:
        try:
            return psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            _down = str(exc).strip()
    message = f"PostgreSQL at {PG_URL} is not reachable: {_down}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def schema_url(schema: str, application_name: str | None = None) -> str:
    """PG_URL with every unqualified name resolved in `schema`."""
    url = f"{PG_URL}?options={quote(f'-c search_path={schema}')}"
    if application_name:
        url += f"&application_name={application_name}"
    return url


@contextmanager
def fresh_schema(upgrade: bool = True, application_name: str | None = None) -> Iterator[str]:
    """A URL whose search_path is a new empty schema (upgraded unless told otherwise)."""
    conn = admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        url = schema_url(schema, application_name)
        if upgrade:
            upgrade_store(url)
        yield url
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
