"""The embedded SQLite store: one writer connection, WAL, idempotent batch inserts."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import astuple

from playledger.errors import RunConflict, RunNotFound, StoreBusy, StoreError
from playledger.events import Event, RunEnd, RunStart
from playledger.store.base import (
    SUMMARY_FIELDS,
    EventFilter,
    HostSummary,
    IngestResult,
    PurgeResult,
    RunRow,
    like_pattern,
)
from playledger.store.lines import LineMarks
from playledger.store.sqlite_api import EVENT_COLUMNS, RUN_COLUMNS, SQLiteReadAPI, _event

PURGE_CHUNK = 10_000  # events deleted per write transaction by purge()

SCHEMA_VERSION = 3  # 2: tokens, runs_status index; 3: a host's runs (host_runs)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    playbook TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'running',
    started TEXT NOT NULL DEFAULT '',
    finished TEXT,
    emitted INTEGER,
    stored INTEGER NOT NULL DEFAULT 0,
    hosts INTEGER,
    stats_counter INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    append_errors INTEGER NOT NULL DEFAULT 0,
    controller TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL DEFAULT '',
    cwd TEXT NOT NULL DEFAULT '',
    argv TEXT NOT NULL DEFAULT '[]',
    ansible_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    counter INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    parent_uuid TEXT,
    created TEXT NOT NULL,
    event TEXT NOT NULL,
    host TEXT,
    play TEXT,
    play_uuid TEXT,
    task TEXT,
    task_uuid TEXT,
    task_action TEXT,
    role TEXT,
    playbook TEXT,
    changed INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    stdout TEXT NOT NULL,
    event_data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, counter)
);
CREATE INDEX IF NOT EXISTS events_host ON events (run_id, host, counter);
CREATE INDEX IF NOT EXISTS events_event ON events (run_id, event, counter);
CREATE INDEX IF NOT EXISTS events_task ON events (run_id, task, counter);
CREATE INDEX IF NOT EXISTS events_failed ON events (run_id, counter) WHERE failed = 1;
CREATE INDEX IF NOT EXISTS events_changed ON events (run_id, counter) WHERE changed = 1;
CREATE TABLE IF NOT EXISTS host_summaries (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    host TEXT NOT NULL,
    ok INTEGER NOT NULL, changed INTEGER NOT NULL, failures INTEGER NOT NULL,
    dark INTEGER NOT NULL, skipped INTEGER NOT NULL, rescued INTEGER NOT NULL,
    ignored INTEGER NOT NULL,
    PRIMARY KEY (run_id, host)
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_active_name ON tokens (name) WHERE revoked IS NULL;
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, id);
CREATE INDEX IF NOT EXISTS host_summaries_host ON host_summaries (host, run_id);
CREATE INDEX IF NOT EXISTS runs_no_recap ON runs (id) WHERE stats_counter = 0;
"""


def _insert_events_sql(run_id: int) -> str:
    """INSERT for rows given as `msgspec.structs.astuple(event)`: no per-row Python tuple.

    Parameters are numbered by the Event field order (?1 is `run`, replaced by the run's id);
    event_data comes as msgspec.Raw (bytes) and is stored as TEXT, as it always was.
    """
    columns, values = [], []
    for i, name in enumerate(Event.__struct_fields__, 1):
        if name != "run":
            columns.append(name)
            values.append(f"CAST(?{i} AS TEXT)" if name == "event_data" else f"?{i}")
    return (
        f"INSERT OR IGNORE INTO events (run_id, {', '.join(columns)}) "
        f"VALUES ({int(run_id)}, {', '.join(values)})"
    )


class SQLiteStore(SQLiteReadAPI):
    """One writer connection, used from one thread at a time; WAL and busy timeout set here only.

    Reads go through a connection per calling thread (as datasette does), so the HTTP API's
    reader threads never see the writer's uncommitted transaction and never wait for it (WAL).
    """

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._line_marks = LineMarks()
        self._readers_lock = threading.Lock()
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                Path(path).expanduser(),
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            # Speed only, durability unchanged: a batch dirties one host-index leaf per host
            # (500 hosts: ~2 MB), so keep those leaves cached (64 MB) and checkpoint them once
            # per ~40 MB of WAL rather than per 4 MB; the WAL shrinks back to 64 MB afterwards.
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute("PRAGMA journal_size_limit=67108864")
            self._migrate()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusy(f"{path}: {exc}") from exc
            raise StoreError(f"cannot open SQLite store {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._run_ids: dict[str, int] = {}

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this playledger "
                f"understands ({SCHEMA_VERSION}); upgrade playledger"
            )
        if version < SCHEMA_VERSION:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")

    # --- writes -----------------------------------------------------------------------------

    def _run_id(self, uuid: str) -> int:
        run_id = self._run_ids.get(uuid)
        if run_id is None:
            self._db.execute("INSERT OR IGNORE INTO runs (uuid) VALUES (?)", (uuid,))
            run_id = int(
                self._db.execute("SELECT id FROM runs WHERE uuid=?", (uuid,)).fetchone()[0]
            )
            self._run_ids[uuid] = run_id
        return run_id

    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        return self.ingest_many([records])[0]

    def ingest_many(
        self, batches: Sequence[Sequence[RunStart | Event | RunEnd]]
    ) -> list[IngestResult]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreBusy(f"{self.path}: {exc}") from exc
            try:
                result = [self._ingest(records) for records in batches]
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                self._run_ids.clear()  # ids assigned in the rolled-back transaction are void
                if isinstance(exc, sqlite3.OperationalError) and (
                    "locked" in str(exc) or "busy" in str(exc)
                ):
                    raise StoreBusy(f"{self.path}: {exc}") from exc
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{self.path}: {exc}") from exc
                raise
            return result

    def _ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        db = self._db
        inserted = duplicates = 0
        pending: list[Event] = []  # consecutive events of one run, inserted in one executemany

        def flush() -> None:
            nonlocal inserted, duplicates, pending
            if not pending:
                return
            run_id = self._run_id(pending[0].run)
            before = db.total_changes
            db.executemany(_insert_events_sql(run_id), map(astuple, pending))
            n = db.total_changes - before
            if n < len(pending):
                self._check_duplicates(run_id, pending)
            db.execute("UPDATE runs SET stored = stored + ? WHERE id = ?", (n, run_id))
            inserted += n
            duplicates += len(pending) - n
            pending = []

        for record in records:
            if isinstance(record, Event):
                if pending and record.run != pending[0].run:
                    flush()
                pending.append(record)
                if record.event == "playbook_on_stats":
                    flush()
                    self._apply_stats(self._run_id(record.run), record)
            elif isinstance(record, RunStart):
                flush()
                self._apply_start(record)
            else:
                flush()
                self._apply_end(record)
        flush()
        return IngestResult(inserted, duplicates)

    def _check_duplicates(self, run_id: int, batch: Sequence[Event]) -> None:
        """An ignored row must be the very same event (same hash), or it is a conflict."""
        stored = dict(
            self._db.execute(
                "SELECT counter, hash FROM events WHERE run_id=? AND counter BETWEEN ? AND ?",
                (run_id, min(e.counter for e in batch), max(e.counter for e in batch)),
            ).fetchall()
        )
        for e in batch:
            if stored.get(e.counter) != e.hash:
                raise RunConflict(
                    f"run {e.run}: counter {e.counter} is already stored as a different event; "
                    "was the run id reused (PLAYLEDGER_RUN_ID)? Nothing was stored from this "
                    "batch and the spool is kept"
                )

    def _apply_start(self, r: RunStart) -> None:
        run_id = self._run_id(r.run)
        started = self._db.execute("SELECT started FROM runs WHERE id=?", (run_id,)).fetchone()[0]
        if started and started != r.created:
            raise RunConflict(
                f"run {r.run} was already started at {started} (this one at {r.created}); "
                "was the run id reused (PLAYLEDGER_RUN_ID)? The spool is kept"
            )
        self._db.execute(
            "UPDATE runs SET playbook=?, started=?, controller=?, user=?, cwd=?, argv=?, "
            "ansible_version=? WHERE id=?",
            (
                r.playbook,
                r.created,
                r.controller,
                r.user,
                r.cwd,
                json.dumps(r.argv),
                r.ansible_version,
                run_id,
            ),
        )

    def _apply_stats(self, run_id: int, e: Event) -> None:
        """The latest stats event of a run is its host summary (stats are cumulative)."""
        row = self._db.execute("SELECT stats_counter FROM runs WHERE id=?", (run_id,)).fetchone()
        if row[0] >= e.counter:
            return
        data = msgspec.json.decode(e.event_data)
        summary: dict[str, dict[str, int]] = data.get("summary", {})
        self._db.execute("DELETE FROM host_summaries WHERE run_id=?", (run_id,))
        self._db.executemany(
            "INSERT INTO host_summaries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, host, *(int(counts.get(f, 0)) for f in SUMMARY_FIELDS))
                for host, counts in summary.items()
            ],
        )
        self._db.execute(
            "UPDATE runs SET stats_counter=?, hosts=? WHERE id=?", (e.counter, len(summary), run_id)
        )

    def _apply_end(self, r: RunEnd) -> None:
        run_id = self._run_id(r.run)
        bad = self._db.execute(
            "SELECT COUNT(*) FROM host_summaries WHERE run_id=? AND (failures > 0 OR dark > 0)",
            (run_id,),
        ).fetchone()[0]
        self._db.execute(
            "UPDATE runs SET emitted=?, finished=?, append_errors=?, "
            "status=CASE WHEN status='running' THEN ? ELSE status END WHERE id=?",
            (r.emitted, r.created, r.append_errors, "failed" if bad else "successful", run_id),
        )

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        """One autocommitted write; a held lock is StoreBusy (retried), never a traceback."""
        with self._lock:
            try:
                self._db.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreBusy(f"{self.path}: {exc}") from exc
                raise StoreError(f"{self.path}: {exc}") from exc

    def mark_aborted(self, run_uuid: str) -> None:
        self._update(
            "UPDATE runs SET status='aborted' WHERE uuid=? AND emitted IS NULL", (run_uuid,)
        )

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None:
        self._update(
            "UPDATE runs SET exit_code=?, status=CASE WHEN ? != 0 AND status='successful' "
            "THEN 'failed' ELSE status END WHERE uuid=?",
            (exit_code, exit_code, run_uuid),
        )

    # --- retention (playledger purge) ---------------------------------------------------------

    def purge(self, before: datetime) -> PurgeResult:
        """Remove the runs recorded before `before` (their start record's time, or their first
        event's), deleting events PURGE_CHUNK rows per write transaction so that shippers keep
        committing in between. The run row goes last: an interrupted purge is finished by the
        next one."""
        cutoff = before.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ids = [
            row[0]
            for row in self._reader().execute(
                "SELECT id FROM runs WHERE COALESCE(NULLIF(started, ''), (SELECT created FROM "
                "events WHERE run_id = runs.id ORDER BY counter LIMIT 1)) < ? ORDER BY id",
                (cutoff,),
            )
        ]
        events = 0
        for run_id in ids:
            while True:
                n = self._purge_write(
                    "DELETE FROM events WHERE rowid IN "
                    "(SELECT rowid FROM events WHERE run_id=? LIMIT ?)",
                    (run_id, PURGE_CHUNK),
                )
                events += n
                if n < PURGE_CHUNK:
                    break
            self._purge_write("DELETE FROM host_summaries WHERE run_id=?", (run_id,))
            self._purge_write("DELETE FROM runs WHERE id=?", (run_id,))
        with self._lock:
            self._run_ids.clear()  # a purged run that comes back gets a new id
        return PurgeResult(runs=len(ids), events=events, partitions=[])

    def _purge_write(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            try:
                return self._db.execute(sql, args).rowcount
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreBusy(f"{self.path}: {exc}") from exc
                raise StoreError(f"{self.path}: {exc}") from exc

    # --- reads ------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use, closed by close())."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(
                    Path(self.path).expanduser(),
                    timeout=self._busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,  # a streamed response may resume on another thread
                )
                db.execute("PRAGMA query_only=1")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read SQLite store {self.path}: {exc}") from exc
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    def _run_row(self, row: tuple[Any, ...], db: sqlite3.Connection) -> RunRow:
        (
            rid,
            uuid,
            playbook,
            status,
            started,
            finished,
            emitted,
            stored,
            hosts,
            exit_code,
            controller,
            user,
            cwd,
            argv,
            ansible_version,
            append_errors,
        ) = row
        if hosts is None:
            # Before the recap: distinct hosts by hopping through the (run_id, host) index,
            # one seek per host, instead of counting over every event of a running run.
            hosts = db.execute(
                "WITH RECURSIVE h(host) AS ("
                " SELECT MIN(host) FROM events WHERE run_id = ?1 AND host IS NOT NULL"
                " UNION ALL SELECT (SELECT MIN(host) FROM events"
                "  WHERE run_id = ?1 AND host > h.host)"
                " FROM h WHERE h.host IS NOT NULL) SELECT COUNT(host) FROM h",
                (rid,),
            ).fetchone()[0]
        return RunRow(
            id=rid,
            uuid=uuid,
            playbook=playbook,
            status=status,
            started=started,
            finished=finished,
            emitted=emitted,
            stored=stored,
            hosts=hosts,
            exit_code=exit_code,
            controller=controller,
            user=user,
            cwd=cwd,
            argv=json.loads(argv),
            ansible_version=ansible_version,
            append_errors=append_errors,
        )

    def runs(self, limit: int = 50) -> list[RunRow]:
        db = self._reader()
        rows = db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [self._run_row(r, db) for r in rows]

    def run(self, ref: str) -> RunRow:
        db = self._reader()
        if ref == "latest":
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        elif ref.isdigit():
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (int(ref),)).fetchone()
        else:
            row = db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE uuid=?", (ref,)).fetchone()
        if row is None:
            what = "no runs recorded yet" if ref == "latest" else f"no run {ref!r}"
            raise RunNotFound(f"{what} in {self.path}")
        return self._run_row(row, db)

    @staticmethod
    def _where(run_id: int, f: EventFilter) -> tuple[str, list[Any]]:
        clauses = ["run_id = ?"]
        args: list[Any] = [run_id]
        if f.host is not None:
            clauses.append("host = ?")
            args.append(f.host)
        if f.event is not None:
            clauses.append("event = ?")
            args.append(f.event)
        if f.task is not None:
            clauses.append("(task = ? OR task_uuid = ?)")
            args += [f.task, f.task]
        # Literals, not parameters: only then can SQLite use the partial indexes
        # (events_failed / events_changed, WHERE ... = 1).
        if f.failed is not None:
            clauses.append("failed = 1" if f.failed else "failed = 0")
        if f.changed is not None:
            clauses.append("changed = 1" if f.changed else "changed = 0")
        if f.min_counter is not None:
            clauses.append("counter >= ?")
            args.append(f.min_counter)
        if f.max_counter is not None:
            clauses.append("counter <= ?")
            args.append(f.max_counter)
        if f.text is not None:  # LIKE: case-insensitive for ASCII letters (no ICU here)
            clauses.append("stdout LIKE ? ESCAPE '\\'")
            args.append(like_pattern(f.text))
        return " AND ".join(clauses), args

    def events(
        self, run_id: int, filters: EventFilter | None = None, limit: int | None = None
    ) -> Iterator[Event]:
        where, args = self._where(run_id, filters or EventFilter())
        db = self._reader()
        uuid = db.execute("SELECT uuid FROM runs WHERE id=?", (run_id,)).fetchone()[0]
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY counter"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        # A cursor of its own, read in pages: a million-event run is never held in memory.
        cursor = db.execute(sql, args)
        while rows := cursor.fetchmany(1000):
            for r in rows:
                yield _event(uuid, r)

    def count_events(self, run_id: int, filters: EventFilter | None = None) -> int:
        f = filters or EventFilter()
        db = self._reader()
        if f == EventFilter():  # the per-run counter kept in each ingest transaction: no scan
            row = db.execute("SELECT stored FROM runs WHERE id=?", (run_id,)).fetchone()
            return int(row[0]) if row else 0
        where, args = self._where(run_id, f)
        return int(db.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()[0])

    def counters(self, run_id: int) -> Iterator[int]:
        cursor = self._reader().execute(
            "SELECT counter FROM events WHERE run_id=? ORDER BY counter", (run_id,)
        )
        while rows := cursor.fetchmany(10000):
            for (counter,) in rows:
                yield counter

    def duplicate_uuids(self, run_id: int) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM events "
                "WHERE run_id=? GROUP BY uuid HAVING COUNT(*) > 1)",
                (run_id,),
            )
            .fetchone()
        )
        return int(row[0])

    def host_summaries(self, run_id: int) -> list[HostSummary] | None:
        db = self._reader()
        has_stats = db.execute("SELECT stats_counter FROM runs WHERE id=?", (run_id,)).fetchone()
        if not has_stats or not has_stats[0]:
            return None
        rows = db.execute(
            f"SELECT host, {', '.join(SUMMARY_FIELDS)} FROM host_summaries "
            "WHERE run_id=? ORDER BY host",
            (run_id,),
        ).fetchall()
        return [HostSummary(*r) for r in rows]

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        self._db.close()
