"""The server's writer threads: batches waiting together are committed together (group
commit), each still gets its own result, and a failing group falls back to one by one."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from apitest import api_store  # noqa: F401 - the fixture: a SQLite file or a PostgreSQL schema
from factories import make_run
from playledger.api.writer import NotRunning, Writer
from playledger.errors import RunConflict
from playledger.store import Store
from playledger.store.base import IngestResult


@pytest.fixture
def held(api_store: Store) -> Iterator[tuple[Writer, threading.Event, list[float]]]:  # noqa: F811
    """A one-thread writer kept busy until the test sets the event, so batches queue up."""
    commits: list[float] = []
    counted: list[IngestResult] = []
    writer = Writer(api_store, 1, commits.append, counted.append)
    writer.start()
    gate = threading.Event()
    writer.submit(lambda: gate.wait(30))
    yield writer, gate, commits
    gate.set()
    writer.stop()


def test_waiting_batches_share_one_commit(
    held: tuple[Writer, threading.Event, list[float]],
    api_store: Store,  # noqa: F811
) -> None:
    writer, gate, commits = held
    a, b = make_run(20), make_run(7)
    futures = [
        writer.submit_ingest(a[:11]),  # start + 1..10
        writer.submit_ingest(a[6:]),  # 6..20 + end: 5 already stored by the batch before
        writer.submit_ingest(b),
    ]
    gate.set()
    results = [f.result(30) for f in futures]
    assert [(r.inserted, r.duplicates) for r in results] == [(10, 0), (10, 5), (7, 0)]
    assert len(commits) == 1, "three waiting batches, one transaction"
    assert api_store.run(a[0].run).stored == 20 and api_store.run(b[0].run).stored == 7


def test_a_failing_group_is_retried_batch_by_batch(
    held: tuple[Writer, threading.Event, list[float]],
    api_store: Store,  # noqa: F811
) -> None:
    writer, gate, commits = held
    done = make_run(5)
    api_store.ingest(done)
    good, clash, other = make_run(6), make_run(5, run=done[0].run), make_run(4)
    futures = [writer.submit_ingest(r) for r in (good, clash, other)]
    gate.set()
    assert futures[0].result(30).inserted == 6
    with pytest.raises(RunConflict):
        futures[1].result(30)
    assert futures[2].result(30).inserted == 4
    assert len(commits) == 2  # the group rolled back; then the two good batches on their own
    assert api_store.run(done[0].run).stored == 5


def test_other_writes_run_in_order_between_groups(
    held: tuple[Writer, threading.Event, list[float]],
    api_store: Store,  # noqa: F811
) -> None:
    writer, gate, _ = held
    run = make_run(3)
    first = writer.submit_ingest(run[:-1])  # no final record yet
    aborted = writer.submit(lambda: api_store.mark_aborted(run[0].run))
    later = writer.submit_ingest(make_run(2))
    gate.set()
    first.result(30), aborted.result(30), later.result(30)
    assert api_store.run(run[0].run).status == "aborted"  # ran after the batch it follows


def test_submit_after_stop_is_refused(api_store: Store) -> None:  # noqa: F811
    writer = Writer(api_store, 1)
    with pytest.raises(NotRunning):
        writer.submit_ingest(make_run(1))
    writer.start()
    writer.stop()
    with pytest.raises(NotRunning):
        writer.submit(lambda: None)
