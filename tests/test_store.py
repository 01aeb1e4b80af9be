"""Store conformance: the same tests for every backend, run on SQLite and on PostgreSQL.

PostgreSQL is the machine's real server (tests/pgtest.py): a fresh schema per test; in CI a
server that is down fails these tests instead of skipping them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from factories import make_run
from pgtest import fresh_schema
from playledger.errors import RunConflict, RunNotFound, StoreBusy, StoreError, TokenNotFound
from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, seal
from playledger.store import EventFilter, RunQuery, Store, is_postgres, open_store, upgrade_store
from playledger.store.base import RECAPLESS_CHECKED
from playledger.store.sqlite import SQLiteStore
from playledger.verify import verify_run


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a store of each backend lives: a SQLite file, or a fresh upgraded schema."""
    if request.param == "sqlite":
        yield str(tmp_path / "s.db")
    else:
        with fresh_schema() as url:
            yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()


def tamper(store_url: str, sql: str, *args: Any) -> None:
    """Change stored rows behind the store's back (`?` placeholders, any backend)."""
    if is_postgres(store_url):
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s").encode(), args)
    else:
        db = sqlite3.connect(store_url, isolation_level=None)
        db.execute(sql, args)
        db.close()


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


def test_ingest_many_commits_batches_together_with_a_result_each(store: Store) -> None:
    a, b = make_run(30), make_run(10)
    results = store.ingest_many([a[:11], a[5:], b])  # 1..10; 5..30 + end; another run
    assert [(r.inserted, r.duplicates) for r in results] == [(10, 0), (20, 6), (10, 0)]
    assert store.run(a[0].run).stored == 30 and store.run(b[0].run).stored == 10
    assert store.ingest_many([]) == []


def test_ingest_many_is_all_or_nothing(store: Store) -> None:
    done = make_run(5)
    store.ingest(done)
    fresh = make_run(8)
    clash = make_run(5, run=done[0].run)  # the same run id and counters, other events
    with pytest.raises(RunConflict):
        store.ingest_many([fresh, clash])
    with pytest.raises(RunNotFound):
        store.run(fresh[0].run)  # nothing of the group was stored
    assert store.run(done[0].run).stored == 5


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


STDOUTS = {
    2: "ok: [web-1] => 100% done",
    3: "ok: [web-2] => 100 done",
    4: "changed: [a_b]",
    5: "changed: [axb]",
    6: "copied to C:\\temp\\new",
    7: "copied to C:temp",
    8: "Grüße aus Köln ✓",
}
TEXT_QUERIES = {
    "100%": [2],  # % is no wildcard
    "% done": [2],
    "a_b": [4],  # _ is no wildcard
    "_": [4],
    "C:\\temp": [6],  # the backslash is no escape
    "C:\\": [6],  # a trailing backslash is no error
    "OK: [WEB-1]": [2],  # case-insensitive
    "ok: [web-": [2, 3],
    "AUS Köln ✓": [8],  # non-ASCII text matches as given (folding it is backend-specific)
    "Grüße": [8],
    "nothing like this": [],
}


def test_text_filter_is_a_literal_case_insensitive_substring(store: Store) -> None:
    records = make_run(20)
    prev = GENESIS_HASH
    for e in _events(records):
        e.stdout = STDOUTS.get(e.counter, e.stdout)
        prev = seal(e, prev)
    store.ingest(records)
    run = store.run("latest")
    for text, expected in TEXT_QUERIES.items():
        f = EventFilter(text=text)
        assert [e.counter for e in store.events(run.id, f)] == expected, text
        assert store.count_events(run.id, f) == len(expected), text
        assert [e.counter for e in store.event_page(run.id, f, after=2, limit=1)] == (
            [c for c in expected if c > 2][:1]
        ), text
    assert store.count_events(run.id, EventFilter(text="")) == 20  # '' matches everything
    both = EventFilter(text="OK: [", host="host-1", min_counter=10)
    assert [e.counter for e in store.events(run.id, both)] == [10, 13, 16, 19]
    assert next(store.events(run.id, EventFilter(text="Köln"))).stdout == STDOUTS[8]


def test_last_event(store: Store) -> None:
    records = make_run(20)
    store.ingest(records)
    run = store.run("latest")
    last = store.last_event(run.id)
    assert last is not None and last == _events(records)[-1]
    failed = [e.counter for e in _events(records) if e.failed]  # 7, 14
    found = store.last_event(run.id, EventFilter(failed=True))
    assert found is not None and found.counter == failed[-1]
    before = store.last_event(run.id, EventFilter(failed=True, max_counter=failed[-1] - 1))
    assert before is not None and before.counter == failed[0]
    assert store.last_event(run.id, EventFilter(failed=True, max_counter=failed[0] - 1)) is None
    assert (
        store.last_event(run.id, EventFilter(text="ok: [host-2]", max_counter=9))
        == (_events(records)[7])
    )
    assert store.last_event(99) is None


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


def test_verify_detects_tampering(store: Store, store_url: str) -> None:
    store.ingest(make_run(30))
    tamper(store_url, "UPDATE events SET stdout='changed: [host-1]' WHERE counter=12")
    report = verify_run(store, store.run("latest"))
    assert not report.chain_ok and not report.complete
    assert any("counter 12" in err for err in report.chain_errors)


def test_verify_detects_a_replaced_event(store: Store, store_url: str) -> None:
    """Rewriting an event *and* its own hash still breaks the link to the next event."""
    store.ingest(make_run(30))
    tamper(store_url, "UPDATE events SET hash=? WHERE counter=12", "f" * 64)
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


def _reseal(records: list[RunStart | Event | RunEnd]) -> None:
    prev = GENESIS_HASH
    for e in _events(records):
        prev = seal(e, prev)


def test_values_postgresql_text_cannot_hold_round_trip(store: Store) -> None:
    """NUL in any text field, and host/task names too long for an index entry."""
    records = make_run(20)
    events = _events(records)
    events[4].stdout = "binary\x00output\x00"
    events[5].task = "t\x00"
    events[6].host = "h" * 3000
    events[7].task = "é" * 1000
    _reseal(records)
    assert store.ingest(records).inserted == 20
    assert store.ingest(records).duplicates == 20
    run = store.run("latest")
    assert list(store.events(run.id)) == events
    assert [e.counter for e in store.events(run.id, EventFilter(host="h" * 3000))] == [7]
    assert store.count_events(run.id, EventFilter(task="é" * 1000)) == 1
    report = verify_run(store, run)
    assert report.complete and report.chain_ok


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_purge_removes_whole_runs_recorded_before_the_cutoff(store: Store) -> None:
    old, older, kept = (make_run(n, day=d) for n, d in
                        ((30, "2026-03-05"), (20, "2026-01-10"), (10, "2026-03-06")))  # fmt: skip
    for records in (old, older, kept):
        store.ingest(records)
    result = store.purge(_stamp("2026-03-06T00:00:00"))
    assert (result.runs, result.events) == (2, 50)
    if isinstance(store, SQLiteStore):
        assert result.partitions == []
    else:  # whole day partitions dropped, no row deleted one by one
        assert result.partitions == ["events_p20260110", "events_p20260305"]
    for gone in (old, older):
        with pytest.raises(RunNotFound):
            store.run(gone[0].run)
    assert [r.uuid for r in store.runs()] == [kept[0].run]
    assert verify_run(store, store.run(kept[0].run)).complete
    assert store.purge(_stamp("2026-03-06T00:00:00")).runs == 0
    # a purged run shipped again (an old spool) is stored again, whole
    assert store.ingest(old).inserted == 30
    again = store.run(old[0].run)
    assert again.stored == 30 and verify_run(store, again).complete


def test_purge_with_a_cutoff_inside_a_day(store: Store) -> None:
    first, second = make_run(10, day="2026-03-06"), make_run(10, day="2026-03-07")
    store.ingest(first)
    store.ingest(second)
    result = store.purge(_stamp("2026-03-06T12:00:00"))
    assert (result.runs, result.events, result.partitions) == (1, 10, [])
    assert [r.uuid for r in store.runs()] == [second[0].run]


def test_purge_cli_keeps_recent_runs(store: Store, store_url: str) -> None:
    from playledger.cli import cli

    today = datetime.now(UTC).date().isoformat()
    ancient, recent = make_run(12, day="2001-02-03"), make_run(8, day=today)
    store.ingest(ancient)
    store.ingest(recent)
    out = CliRunner().invoke(cli, ["--db", store_url, "purge", "--older-than", "90d"])
    assert out.exit_code == 0, out.output
    assert "1 run" in out.output and "12 events" in out.output
    assert [r.uuid for r in store.runs()] == [recent[0].run]
    bad = CliRunner().invoke(cli, ["--db", store_url, "purge", "--older-than", "soon"])
    assert bad.exit_code == 2 and "90d" in bad.output


def test_db_upgrade_cli(store_url: str) -> None:
    from playledger.cli import cli

    out = CliRunner().invoke(cli, ["--db", store_url, "db", "upgrade"])
    assert out.exit_code == 0, out.output
    assert "up to date" in out.output or "upgraded" in out.output
    again = CliRunner().invoke(cli, ["--db", store_url, "db", "upgrade"])
    assert again.exit_code == 0 and "up to date" in again.output


def test_concurrent_ingest_of_overlapping_batches(store: Store, store_url: str) -> None:
    """Two writers (each its own store, as two shippers or two servers would be) deliver
    overlapping batches of one run at once: every counter is stored once, `stored` is exact."""
    records = make_run(3000)
    stores = [store, open_store(store_url)]
    barrier = threading.Barrier(2)
    inserted = [0, 0]
    errors: list[BaseException] = []

    def ship(i: int, step: int, size: int) -> None:
        try:
            barrier.wait()
            for start in range(0, len(records), step):
                batch = records[start : start + size]
                while True:
                    try:
                        inserted[i] += stores[i].ingest(batch).inserted
                        break
                    except StoreBusy:  # SQLite: the other writer holds the lock
                        continue
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=ship, args=(0, 250, 400)),
        threading.Thread(target=ship, args=(1, 300, 500)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stores[1].close()
    assert errors == []
    assert sum(inserted) == 3000
    run = store.run("latest")
    assert run.stored == run.emitted == store.count_events(run.id) == 3000
    assert list(store.counters(run.id)) == list(range(1, 3001))
    assert verify_run(store, run).complete


# --- the read API (HTTP API reads, metrics, tokens) --------------------------------------------


def test_list_and_count_runs(store: Store) -> None:
    a, b, c = make_run(5, day="2026-01-01"), make_run(5, day="2026-02-01"), make_run(5)
    for records in (a, b, c[:-1]):
        store.ingest(records)
    ids = {r.uuid: r.id for r in store.runs()}
    everything = RunQuery()
    assert [r.uuid for r in store.list_runs(everything, 10)] == [c[0].run, b[0].run, a[0].run]
    assert store.count_runs(everything) == 3
    running = RunQuery(status="running")
    assert [r.uuid for r in store.list_runs(running, 10)] == [c[0].run]
    assert store.count_runs(RunQuery(playbook="site")) == 3
    assert store.count_runs(RunQuery(playbook="nope.yml")) == 0
    window = RunQuery(since="2026-01-15T00:00:00Z", until="2026-03-01T00:00:00Z")
    assert [r.uuid for r in store.list_runs(window, 10)] == [b[0].run]
    page = RunQuery(before_id=ids[c[0].run])
    assert [r.uuid for r in store.list_runs(page, 1)] == [b[0].run]
    assert store.count_runs(page) == 3  # the cursor does not change the count


def test_event_pages(store: Store) -> None:
    records = make_run(50)
    store.ingest(records)
    run = store.run("latest")
    events = _events(records)
    assert store.event_page(run.id, limit=10) == events[:10]
    assert store.event_page(run.id, after=10, limit=5) == events[10:15]
    assert store.event_page(run.id, limit=5, offset=45) == events[45:]
    failed = [e for e in events if e.failed]
    assert store.event_page(run.id, EventFilter(failed=True), limit=100) == failed
    assert (
        store.event_page(run.id, EventFilter(failed=True), after=failed[0].counter) == (failed[1:])
    )
    assert store.event_page(999, limit=10) == []
    assert store.max_counter(run.id) == 50 and store.max_counter(999) == 0


def test_stdout_line_offsets(store: Store) -> None:
    records = make_run(20)
    events = _events(records)
    events[3].stdout = "one\ntwo\nthree"
    _reseal(records)
    store.ingest(records)
    run = store.run("latest")
    lines, expected = 0, {}
    for e in events:
        expected[e.counter] = lines
        lines += e.stdout.count("\n") + 1 if e.stdout else 0
    wanted = [1, 4, 5, 17]
    assert store.stdout_line_offsets(run.id, wanted) == {c: expected[c] for c in wanted}
    assert store.stdout_line_offsets(run.id, []) == {}


def test_stdout_line_offsets_across_cached_blocks_and_a_filled_hole(store: Store) -> None:
    """Deep AWX pages use cached per-block line sums (store/lines.py): a block with a hole is
    never cached, so filling the hole later changes every answer after it."""
    records = make_run(2600)
    events = _events(records)
    for e in events:
        e.stdout = "\n".join(["x"] * (1 + e.counter % 4)) if e.counter % 7 else ""
    _reseal(records)
    hole = next(r for r in records if isinstance(r, Event) and r.counter == 1500)
    store.ingest([r for r in records if r is not hole])
    run = store.run("latest")

    def expected(skip: int | None) -> dict[int, int]:
        lines, before = 0, {}
        for e in events:
            if e.counter == skip:
                continue
            before[e.counter] = lines
            lines += e.stdout.count("\n") + 1 if e.stdout else 0
        return before

    wanted = [999, 1000, 1001, 2001, 2500, 2600]
    for _ in range(2):  # the second time from the cached blocks
        assert store.stdout_line_offsets(run.id, wanted) == {c: expected(1500)[c] for c in wanted}
    assert store.stdout_line_offsets(run.id, [5]) == {5: expected(1500)[5]}  # a shallow one after
    store.ingest([hole])
    assert store.stdout_line_offsets(run.id, wanted) == {c: expected(None)[c] for c in wanted}


def test_open_runs_and_pool_stats(store: Store) -> None:
    done, open_ = make_run(10), make_run(10)
    store.ingest(done)
    store.ingest(open_[:6])  # start + 5 events, no final record
    lags = store.open_runs()
    assert [(r.uuid, r.stored, r.max_counter) for r in lags] == [(open_[0].run, 5, 5)]
    stats = store.pool_stats()
    assert stats.size >= 1 and 0 <= stats.in_use <= stats.size


def test_tokens(store: Store) -> None:
    t = store.add_token("ci", "ingest", "d" * 64, "plt_abc", "2026-12-04T00:00:00Z")
    assert (t.name, t.scope, t.prefix, t.revoked) == ("ci", "ingest", "plt_abc", None)
    with pytest.raises(StoreError, match="exists already"):
        store.add_token("ci", "read", "e" * 64, "plt_def", "2026-12-04T00:00:01Z")
    assert store.token_by_digest("d" * 64) == t
    assert store.token_by_digest("x" * 64) is None
    revoked = store.revoke_token("ci", "2026-12-05T00:00:00Z")
    assert revoked.id == t.id and revoked.revoked == "2026-12-05T00:00:00Z"
    assert store.token_by_digest("d" * 64) is None
    with pytest.raises(TokenNotFound):
        store.revoke_token(str(t.id), "2026-12-06T00:00:00Z")
    again = store.add_token("ci", "read", "f" * 64, "plt_ghi", "2026-12-06T00:00:00Z")
    assert [x.name for x in store.tokens()] == ["ci", "ci"] and again.id != t.id


# --- host summaries page by page, a host's runs (schema 3) -------------------------------------


def _with_summary(
    records: list[RunStart | Event | RunEnd], summary: dict[str, dict[str, int]]
) -> None:
    """Replace the recap of a make_run() run (and reseal the chain)."""
    _events(records)[-1].event_data = encode_data({"summary": summary})
    _reseal(records)


def _line(ok: int = 1, failures: int = 0, dark: int = 0, changed: int = 0) -> dict[str, int]:
    return {"ok": ok, "changed": changed, "failures": failures, "dark": dark, "skipped": 2,
            "rescued": 0, "ignored": 1}  # fmt: skip


def test_host_summary_pages_and_totals(store: Store) -> None:
    records = make_run(20, hosts=3)
    hosts = {f"h-{i:03d}": _line(ok=i) for i in range(250)}
    hosts["h-007"] = _line(failures=2)
    hosts["h-120"] = _line(dark=1)
    hosts["h-121"] = _line(failures=1, dark=1, changed=3)
    _with_summary(records, hosts)
    store.ingest(records[:-2])  # no recap yet
    run = store.run("latest")
    assert store.host_totals(run.id) is None and store.host_summary_page(run.id, 10) == []
    store.ingest(records)
    totals = store.host_totals(run.id)
    lines = list(hosts.values())
    assert totals is not None
    assert (totals.hosts, totals.failed_hosts) == (250, 3)
    assert totals.ok == sum(x["ok"] for x in lines) and totals.failures == 3
    assert (totals.dark, totals.changed, totals.skipped, totals.ignored) == (2, 3, 500, 250)
    names = sorted(hosts)
    pages = [store.host_summary_page(run.id, 100, offset) for offset in (0, 100, 200, 300)]
    assert [[s.host for s in p] for p in pages] == [names[:100], names[100:200], names[200:], []]
    failed = store.host_summary_page(run.id, 2, 0, failed_only=True)
    assert [s.host for s in failed] == ["h-007", "h-120"]
    assert [s.host for s in store.host_summary_page(run.id, 2, 2, failed_only=True)] == ["h-121"]
    one = store.host_summary(run.id, "h-121")
    assert one is not None and (one.failures, one.dark, one.changed, one.skipped) == (1, 1, 3, 2)
    assert store.host_summary(run.id, "nope") is None
    assert store.host_totals(999) is None
    # a recap with no host at all: totals of zero, not "no recap"
    empty = make_run(5)
    _with_summary(empty, {})
    store.ingest(empty)
    zero = store.host_totals(store.run("latest").id)
    assert zero is not None and (zero.hosts, zero.ok) == (0, 0)


def test_host_runs_newest_first_from_recaps_and_events(store: Store) -> None:
    """host-1 is in runs 1 (recap), 3 (recap), 4 (running: events only) and 6 (killed:
    events only); not in 2 (other hosts) nor 5 (its recap lists no host-1, events do)."""
    old = make_run(20, hosts=3)
    other = make_run(20, hosts=1)  # host-0 only
    newer = make_run(20, hosts=2)
    running, killed = make_run(20, hosts=3), make_run(20, hosts=2)
    partial = make_run(20, hosts=3)
    _with_summary(partial, {"host-0": _line(), "host-2": _line()})
    for records in (old, other, newer):
        store.ingest(records)
    store.ingest(running[:12])
    store.ingest(partial)
    store.ingest(killed[:8])
    store.mark_aborted(killed[0].run)
    found = store.host_runs("host-1", 10)
    assert [(h.run.id, h.summary is not None) for h in found] == [
        (6, False),
        (4, False),
        (3, True),
        (1, True),
    ]
    assert [h.run.status for h in found] == ["aborted", "running", "successful", "successful"]
    assert found[2].summary == store.host_summary(3, "host-1")
    assert [h.run.id for h in store.host_runs("host-1", 2)] == [6, 4]
    assert [h.run.id for h in store.host_runs("host-1", 2, before_id=4)] == [3, 1]
    assert [h.run.id for h in store.host_runs("host-1", 10, before_id=1)] == []
    assert [h.run.id for h in store.host_runs("host-0", 10)] == [6, 5, 4, 3, 2, 1]
    assert store.host_runs("nobody", 10) == []
    # the running run's recap arrives: it is now a recap row
    store.ingest(running)
    assert [(h.run.id, h.summary is not None) for h in store.host_runs("host-1", 3)] == [
        (6, False),
        (4, True),
        (3, True),
    ]


def test_host_runs_reaches_past_many_newer_runs(store: Store) -> None:
    """The recap index finds a host's run behind any number of newer runs without it; runs
    without a recap are looked at only among the RECAPLESS_CHECKED newest of them."""
    first = make_run(10, hosts=4)  # host-3 only here
    store.ingest(first)
    for _ in range(35):
        store.ingest(make_run(5, hosts=2))
    found = store.host_runs("host-3", 5)
    assert [h.run.id for h in found] == [1] and found[0].summary is not None
    purged = store.purge(_stamp("2026-12-05T00:00:00"))
    assert purged.runs == 36 and store.host_runs("host-3", 5) == []


def test_recapless_runs_checked_are_bounded(store: Store) -> None:
    lone = make_run(10, hosts=4)
    store.ingest(lone[:3])  # counters 1 (play start) and 2 (host-2): no host-3 yet
    assert store.host_runs("host-3", 5) == []
    store.ingest(lone[:5])  # counter 3 is host-3's
    assert [h.run.id for h in store.host_runs("host-3", 5)] == [1]
    for _ in range(RECAPLESS_CHECKED):
        store.ingest(make_run(5, hosts=1)[:3])  # running, no recap, host-0 only
    assert store.host_runs("host-3", 5) == []  # beyond the newest RECAPLESS_CHECKED


def test_schema_3_adds_the_host_indexes(store_url: str) -> None:
    """A store at schema 2 is upgraded (SQLite on open, PostgreSQL by `db upgrade`) and its
    existing recaps are found by host."""
    s = open_store(store_url)
    s.ingest(make_run(10, hosts=2))
    s.close()
    if is_postgres(store_url):
        tamper(store_url, "DROP INDEX host_summaries_host")
        tamper(store_url, "DROP INDEX runs_no_recap")
        tamper(store_url, "DELETE FROM schema_version WHERE version = 3")
        with pytest.raises(StoreError, match="older"):
            open_store(store_url)
        assert upgrade_store(store_url).applied == [3]
        with psycopg.connect(store_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            ).fetchall()
        names = {r[0] for r in rows}
    else:
        tamper(store_url, "DROP INDEX host_summaries_host")
        tamper(store_url, "DROP INDEX runs_no_recap")
        tamper(store_url, "PRAGMA user_version=2")
        assert upgrade_store(store_url).applied == [3]
        db = sqlite3.connect(store_url)
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        plan = " ".join(
            str(r[-1])
            for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT run_id FROM host_summaries WHERE host = 'host-1' "
                "ORDER BY run_id DESC LIMIT 5"
            )
        )
        db.close()
        assert "host_summaries_host" in plan
    assert {"host_summaries_host", "runs_no_recap"} <= names
    s = open_store(store_url)
    try:
        assert [h.run.id for h in s.host_runs("host-1", 5)] == [1]
    finally:
        s.close()
