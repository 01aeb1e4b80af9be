"""What only the PostgreSQL store has: migrations, the pool bound, partitions, error mapping.

Behaviour shared with SQLite is in test_store.py (the conformance suite runs on both).
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from factories import make_run
from pgtest import PG_URL, admin, fresh_schema
from playledger.errors import StoreBusy, StoreError
from playledger.events import Event
from playledger.store import open_store, upgrade_store
from playledger.store.pg_schema import LATEST, MIGRATIONS
from playledger.store.postgres import _translate, display_url


def test_fresh_schema_is_refused_until_upgraded() -> None:
    with fresh_schema(upgrade=False) as url:
        with pytest.raises(StoreError, match="run `playledger db upgrade`"):
            open_store(url)
        result = upgrade_store(url)
        assert (result.before, result.after) == (0, LATEST)
        assert result.applied == [m.version for m in MIGRATIONS]
        assert upgrade_store(url).applied == []  # idempotent
        store = open_store(url)
        assert store.ingest(make_run(5)).inserted == 5
        store.close()


def test_concurrent_upgrades_apply_each_step_once() -> None:
    with fresh_schema(upgrade=False) as url:
        results: list[list[int]] = []
        threads = [
            threading.Thread(target=lambda: results.append(upgrade_store(url).applied))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(v for r in results for v in r) == [m.version for m in MIGRATIONS]


def test_unknown_newer_schema_is_refused() -> None:
    with fresh_schema() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, 'from the future')",
                (LATEST + 1,),
            )
        with pytest.raises(StoreError, match=f"schema version {LATEST + 1} is newer"):
            open_store(url)
        with pytest.raises(StoreError, match="upgrade playledger"):
            upgrade_store(url)


def test_older_schema_asks_for_db_upgrade() -> None:
    with fresh_schema() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM schema_version WHERE version = %s", (LATEST,))
        with pytest.raises(StoreError, match=r"older .* run `playledger db upgrade`"):
            open_store(url)


def test_a_run_stays_in_its_first_day_partition() -> None:
    """Events dated after midnight (a long run) land with their run: one partition per run."""
    with fresh_schema() as url:
        store = open_store(url)
        records = make_run(20, day="2026-03-06")
        for r in records[5:]:
            if isinstance(r, Event):
                r.created = "2026-03-07T00:10:00.000000Z"  # (unsealed: layout only)
        store.ingest(records[:5])
        store.ingest(records[5:])
        with psycopg.connect(url, autocommit=True) as conn:
            parts = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM events").fetchall()
        assert parts == [("events_p20260306",)]
        store.close()


def test_pool_is_bounded() -> None:
    """Eight threads writing and reading at once share at most pool_size connections."""
    app = f"pl_pool_{uuid.uuid4().hex[:8]}"
    with fresh_schema(application_name=app) as url:
        store = open_store(url, pool_size=2)
        assert store.pool_stats().size == 2
        runs = [make_run(400) for _ in range(8)]
        stop = threading.Event()
        seen: list[int] = []
        errors: list[BaseException] = []

        def watch() -> None:
            with admin() as conn:
                while not stop.is_set():
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (app,),
                    ).fetchone()
                    seen.append(int(row[0]) if row else 0)
                    seen.append(store.pool_stats().in_use)
                    time.sleep(0.005)

        def work(records: list) -> None:  # type: ignore[type-arg]
            try:
                for i in range(0, len(records), 50):
                    store.ingest(records[i : i + 50])
                    store.runs()
                run = store.run(records[0].run)
                assert len(list(store.events(run.id))) == 400
            except BaseException as exc:
                errors.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        workers = [threading.Thread(target=work, args=(r,)) for r in runs]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        watcher.join()
        assert errors == []
        assert max(seen) <= 2 and max(seen) >= 1
        assert sum(r.stored for r in store.runs()) == 8 * 400
        store.close()


def test_lock_held_elsewhere_is_busy_then_recovers() -> None:
    with fresh_schema() as url:
        store = open_store(url, busy_timeout=0.3)
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreBusy):
                store.ingest(make_run(3))
            holder.rollback()
        assert store.ingest(make_run(3)).inserted == 3
        store.close()


def test_server_unreachable_is_busy() -> None:
    """Connection refused: the store still opens (a shipper then backs off and retries)."""
    url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=1"
    store = open_store(url, busy_timeout=0.5)
    with pytest.raises(StoreBusy, match="PostgreSQL unavailable"):
        store.ingest(make_run(3))
    with pytest.raises(StoreBusy):
        store.run("latest")
    store.close()


def test_connections_killed_by_the_server_cost_no_failed_batch() -> None:
    """An admin shutdown / restart kills pooled connections; the pool replaces them."""
    app = f"pl_kill_{uuid.uuid4().hex[:8]}"
    with fresh_schema(application_name=app) as url:
        store = open_store(url)
        assert store.ingest(make_run(5)).inserted == 5
        with admin() as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed and killed[0] >= 1
        assert store.ingest(make_run(5)).inserted == 5
        assert len(store.runs()) == 2
        store.close()


@pytest.mark.parametrize(
    ("error", "busy"),
    [
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.SerializationFailure("could not serialize access"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), True),
        (psycopg.OperationalError("connection refused"), True),
        (psycopg.errors.UndefinedTable('relation "events" does not exist'), False),
        (psycopg.errors.NotNullViolation("null value"), False),
    ],
)
def test_error_mapping(error: psycopg.Error, busy: bool) -> None:
    translated = _translate(error, "db")
    assert isinstance(translated, StoreError)
    assert isinstance(translated, StoreBusy) == busy


def test_messages_never_show_the_password() -> None:
    assert display_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u@h:5432/db"
    assert display_url(PG_URL) == PG_URL
