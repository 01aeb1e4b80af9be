"""The embedded SQLite store: one writer connection, WAL, idempotent batch inserts."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from playledger.errors import RunNotFound, StoreBusy, StoreError
from playledger.events import Event, RunEnd, RunStart
from playledger.store.base import (
    SUMMARY_FIELDS,
    EventFilter,
    HostSummary,
    IngestResult,
    RunRow,
)

SCHEMA_VERSION = 1

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
"""

EVENT_COLUMNS = (
    "counter, uuid, parent_uuid, created, event, host, play, play_uuid, task, task_uuid, "
    "task_action, role, playbook, changed, failed, stdout, event_data, prev_hash, hash"
)
RUN_COLUMNS = (
    "id, uuid, playbook, status, started, finished, emitted, stored, hosts, exit_code, "
    "controller, user, cwd, argv, ansible_version, append_errors"
)


def _event_row(run_id: int, e: Event) -> tuple[Any, ...]:
    return (
        run_id,
        e.counter,
        e.uuid,
        e.parent_uuid,
        e.created,
        e.event,
        e.host,
        e.play,
        e.play_uuid,
        e.task,
        e.task_uuid,
        e.task_action,
        e.role,
        e.playbook,
        int(e.changed),
        int(e.failed),
        e.stdout,
        bytes(e.event_data).decode(),
        e.prev_hash,
        e.hash,
    )


class SQLiteStore:
    """One connection, used from one thread at a time; WAL and busy timeout set here only."""

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
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
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreBusy(f"{self.path}: {exc}") from exc
            try:
                result = self._ingest(records)
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
        pending: list[tuple[Any, ...]] = []
        pending_run: int | None = None

        def flush() -> None:
            nonlocal inserted, duplicates, pending
            if not pending:
                return
            before = db.total_changes
            db.executemany(f"INSERT OR IGNORE INTO events VALUES (?{', ?' * 19})", pending)
            n = db.total_changes - before
            db.execute("UPDATE runs SET stored = stored + ? WHERE id = ?", (n, pending_run))
            inserted += n
            duplicates += len(pending) - n
            pending = []

        for record in records:
            if isinstance(record, Event):
                run_id = self._run_id(record.run)
                if run_id != pending_run:
                    flush()
                    pending_run = run_id
                pending.append(_event_row(run_id, record))
                if record.event == "playbook_on_stats":
                    flush()
                    self._apply_stats(run_id, record)
            elif isinstance(record, RunStart):
                flush()
                self._apply_start(record)
            else:
                flush()
                self._apply_end(record)
        flush()
        return IngestResult(inserted, duplicates)

    def _apply_start(self, r: RunStart) -> None:
        run_id = self._run_id(r.run)
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

    def mark_aborted(self, run_uuid: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status='aborted' WHERE uuid=? AND emitted IS NULL", (run_uuid,)
            )

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE runs SET exit_code=?, status=CASE WHEN ? != 0 AND status='successful' "
                "THEN 'failed' ELSE status END WHERE uuid=?",
                (exit_code, exit_code, run_uuid),
            )

    # --- reads ------------------------------------------------------------------------------

    def _run_row(self, row: tuple[Any, ...]) -> RunRow:
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
            hosts = self._db.execute(
                "SELECT COUNT(DISTINCT host) FROM events WHERE run_id=? AND host IS NOT NULL",
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
        with self._lock:
            rows = self._db.execute(
                f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [self._run_row(r) for r in rows]

    def run(self, ref: str) -> RunRow:
        with self._lock:
            if ref == "latest":
                row = self._db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1"
                ).fetchone()
            elif ref.isdigit():
                row = self._db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE id=?", (int(ref),)
                ).fetchone()
            else:
                row = self._db.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE uuid=?", (ref,)
                ).fetchone()
            if row is None:
                what = "no runs recorded yet" if ref == "latest" else f"no run {ref!r}"
                raise RunNotFound(f"{what} in {self.path}")
            return self._run_row(row)

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
        if f.failed is not None:
            clauses.append("failed = ?")
            args.append(int(f.failed))
        if f.changed is not None:
            clauses.append("changed = ?")
            args.append(int(f.changed))
        if f.min_counter is not None:
            clauses.append("counter >= ?")
            args.append(f.min_counter)
        if f.max_counter is not None:
            clauses.append("counter <= ?")
            args.append(f.max_counter)
        return " AND ".join(clauses), args

    def events(
        self, run_id: int, filters: EventFilter | None = None, limit: int | None = None
    ) -> Iterator[Event]:
        where, args = self._where(run_id, filters or EventFilter())
        uuid = self._db.execute("SELECT uuid FROM runs WHERE id=?", (run_id,)).fetchone()[0]
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY counter"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        # A cursor of its own, read in pages: a million-event run is never held in memory.
        cursor = self._db.execute(sql, args)
        while rows := cursor.fetchmany(1000):
            for r in rows:
                yield Event(
                    run=uuid,
                    counter=r[0],
                    uuid=r[1],
                    parent_uuid=r[2],
                    created=r[3],
                    event=r[4],
                    host=r[5],
                    play=r[6],
                    play_uuid=r[7],
                    task=r[8],
                    task_uuid=r[9],
                    task_action=r[10],
                    role=r[11],
                    playbook=r[12],
                    changed=bool(r[13]),
                    failed=bool(r[14]),
                    stdout=r[15],
                    event_data=msgspec.Raw(r[16].encode()),
                    prev_hash=r[17],
                    hash=r[18],
                )

    def count_events(self, run_id: int, filters: EventFilter | None = None) -> int:
        where, args = self._where(run_id, filters or EventFilter())
        with self._lock:
            return int(
                self._db.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()[0]
            )

    def counters(self, run_id: int) -> Iterator[int]:
        cursor = self._db.execute(
            "SELECT counter FROM events WHERE run_id=? ORDER BY counter", (run_id,)
        )
        while rows := cursor.fetchmany(10000):
            for (counter,) in rows:
                yield counter

    def duplicate_uuids(self, run_id: int) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM events "
                "WHERE run_id=? GROUP BY uuid HAVING COUNT(*) > 1)",
                (run_id,),
            ).fetchone()
            return int(row[0])

    def host_summaries(self, run_id: int) -> list[HostSummary] | None:
        with self._lock:
            has_stats = self._db.execute(
                "SELECT stats_counter FROM runs WHERE id=?", (run_id,)
            ).fetchone()
            if not has_stats or not has_stats[0]:
                return None
            rows = self._db.execute(
                f"SELECT host, {', '.join(SUMMARY_FIELDS)} FROM host_summaries "
                "WHERE run_id=? ORDER BY host",
                (run_id,),
            ).fetchall()
            return [HostSummary(*r) for r in rows]

    def close(self) -> None:
        self._db.close()
