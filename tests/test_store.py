"""Store conformance: the same tests for every backend (SQLite now; PostgreSQL joins later)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from factories import make_run
from playledger.errors import RunNotFound, StoreBusy
from playledger.events import Event
from playledger.store import EventFilter, Store
from playledger.store.sqlite import SQLiteStore
from playledger.verify import verify_run

StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = SQLiteStore(str(tmp_path / "s.db"))
    yield s
    s.close()


def _events(records: list) -> list[Event]:  # type: ignore[type-arg]
    return [r for r in records if isinstance(r, Event)]


def test_ingest_is_idempotent(store: Store) -> None:
    records = make_run(50)
    first = store.ingest(records)
    again = store.ingest(records)
    assert (first.inserted, first.duplicates) == (50, 0)
    assert (again.inserted, again.duplicates) == (0, 50)
    run = store.run("latest")
    assert run.stored == 50 and run.emitted == 50
    assert store.count_events(run.id) == 50


def test_partial_overlap_counts_only_new_events(store: Store) -> None:
    records = make_run(30)
    store.ingest(records[:11])  # the start record and events 1..10
    result = store.ingest(records[5:])  # events 5..30 and the final record
    assert result.inserted == 20 and result.duplicates == 6
    assert store.run("latest").stored == 30


def test_run_refs(store: Store) -> None:
    a, b = make_run(5), make_run(5)
    store.ingest(a)
    store.ingest(b)
    latest = store.run("latest")
    assert latest.uuid == b[0].run
    assert store.run("1").uuid == a[0].run
    assert store.run(a[0].run).id == 1
    for bad in ("99", "nope", "00000000-0000-0000-0000-000000000000"):
        with pytest.raises(RunNotFound):
            store.run(bad)


def test_empty_store_latest_is_a_clear_error(store: Store) -> None:
    with pytest.raises(RunNotFound, match="no runs"):
        store.run("latest")


def test_filters(store: Store) -> None:
    records = make_run(100)
    store.ingest(records)
    run = store.run("latest")
    events = _events(records)
    by = {
        EventFilter(host="host-1"): [e for e in events if e.host == "host-1"],
        EventFilter(event="runner_on_failed"): [e for e in events if e.event == "runner_on_failed"],
        EventFilter(failed=True): [e for e in events if e.failed],
        EventFilter(changed=True): [e for e in events if e.changed],
        EventFilter(task="task 2"): [e for e in events if e.task == "task 2"],
        EventFilter(min_counter=10, max_counter=19): events[9:19],
    }
    for f, expected in by.items():
        got = list(store.events(run.id, f))
        assert [e.counter for e in got] == [e.counter for e in expected], f
        assert store.count_events(run.id, f) == len(expected)
    assert [e.counter for e in store.events(run.id, limit=3)] == [1, 2, 3]


def test_events_round_trip_every_field(store: Store) -> None:
    records = make_run(20)
    store.ingest(records)
    got = list(store.events(store.run("latest").id))
    assert got == _events(records)


def test_host_summaries_and_status(store: Store) -> None:
    records = make_run(10, hosts=4)
    store.ingest(records)
    run = store.run("latest")
    summaries = store.host_summaries(run.id)
    assert summaries is not None and [s.host for s in summaries] == [f"host-{i}" for i in range(4)]
    assert run.hosts == 4 and run.status == "successful"
    store.set_exit_code(run.uuid, 2)
    assert store.run("latest").status == "failed"


def test_run_without_final_record(store: Store) -> None:
    records = make_run(10)
    store.ingest(records[:-1])
    run = store.run("latest")
    assert run.emitted is None and run.status == "running"
    store.mark_aborted(run.uuid)
    assert store.run("latest").status == "aborted"


def test_verify_complete_run(store: Store) -> None:
    store.ingest(make_run(40))
    report = verify_run(store, store.run("latest"))
    assert report.complete and report.chain_ok and report.missing == []
    assert report.hosts_targeted == report.hosts_in_summary == 3


def test_verify_reports_gaps_as_ranges(store: Store) -> None:
    records = make_run(40)
    kept = [r for r in records if not (isinstance(r, Event) and r.counter in (5, 6, 7, 20))]
    store.ingest(kept)
    report = verify_run(store, store.run("latest"))
    assert not report.complete
    assert report.missing == [(5, 7), (20, 20)] and report.missing_count == 4
    assert not report.chain_ok  # links across gaps cannot be verified


def test_verify_prefix_of_a_killed_run(store: Store) -> None:
    records = make_run(40)
    store.ingest(records[:21])  # start + 20 events, no stats, no final record
    report = verify_run(store, store.run("latest"))
    assert not report.finished and not report.complete
    assert report.missing == [] and report.chain_ok and report.stored == 20


def test_verify_detects_tampering(store: Store, tmp_path: Path) -> None:
    store.ingest(make_run(30))
    assert isinstance(store, SQLiteStore)
    store._db.execute("UPDATE events SET stdout='changed: [host-1]' WHERE counter=12")
    report = verify_run(store, store.run("latest"))
    assert not report.chain_ok and not report.complete
    assert any("counter 12" in err for err in report.chain_errors)


def test_verify_detects_a_replaced_event(store: Store) -> None:
    """Rewriting an event *and* its own hash still breaks the link to the next event."""
    store.ingest(make_run(30))
    assert isinstance(store, SQLiteStore)
    store._db.execute("UPDATE events SET hash=? WHERE counter=12", ("f" * 64,))
    report = verify_run(store, store.run("latest"))
    assert any("counter 13" in err for err in report.chain_errors)


def test_sqlite_busy_is_reported_as_busy(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "s.db"
    store = SQLiteStore(str(path), busy_timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusy):
            store.ingest(make_run(3))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.ingest(make_run(3)).inserted == 3
    store.close()
