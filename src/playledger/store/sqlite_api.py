"""The SQLite store's read API (HTTP API reads, metrics) and token table.

A mixin of `SQLiteStore`: every read goes through the calling thread's own read connection
(`_reader()`), so API threads see committed data only and never wait for the writer (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import msgspec

from playledger.errors import StoreBusy, StoreError, TokenNotFound
from playledger.events import Event
from playledger.store.base import (
    RECAPLESS_CHECKED,
    SUMMARY_FIELDS,
    EventFilter,
    HostRun,
    HostSummary,
    HostTotals,
    PoolStats,
    RunLag,
    RunQuery,
    RunRow,
    TokenRow,
)
from playledger.store.lines import LineMarks

EVENT_COLUMNS = (
    "counter, uuid, parent_uuid, created, event, host, play, play_uuid, task, task_uuid, "
    "task_action, role, playbook, changed, failed, stdout, event_data, prev_hash, hash"
)
RUN_COLUMNS = (
    "id, uuid, playbook, status, started, finished, emitted, stored, hosts, exit_code, "
    "controller, user, cwd, argv, ansible_version, append_errors"
)
SUMMARY_COLUMNS = "host, " + ", ".join(SUMMARY_FIELDS)


def _event(run_uuid: str, r: tuple[Any, ...]) -> Event:
    """An Event from a row selected as EVENT_COLUMNS."""
    return Event(
        run=run_uuid,
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


class SQLiteReadAPI:
    _line_marks: LineMarks  # AWX start_line block sums, see store/lines.py
    path: str
    _db: sqlite3.Connection
    _lock: threading.Lock

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _run_row(self, row: tuple[Any, ...], db: sqlite3.Connection) -> RunRow:
        raise NotImplementedError

    @staticmethod
    def _where(run_id: int, f: EventFilter) -> tuple[str, list[Any]]:
        raise NotImplementedError

    @staticmethod
    def _run_where(q: RunQuery, keyset: bool) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if q.status is not None:
            clauses.append("status = ?")
            args.append(q.status)
        if q.playbook is not None:
            clauses.append("instr(playbook, ?) > 0")
            args.append(q.playbook)
        if q.since is not None:
            clauses.append("started >= ?")
            args.append(q.since)
        if q.until is not None:
            clauses.append("started < ?")
            args.append(q.until)
        if keyset and q.before_id is not None:
            clauses.append("id < ?")
            args.append(q.before_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list_runs(self, query: RunQuery, limit: int) -> list[RunRow]:
        where, args = self._run_where(query, keyset=True)
        db = self._reader()
        rows = db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY id DESC LIMIT ?", [*args, limit]
        ).fetchall()
        return [self._run_row(r, db) for r in rows]

    def count_runs(self, query: RunQuery) -> int:
        where, args = self._run_where(query, keyset=False)
        return int(self._reader().execute(f"SELECT COUNT(*) FROM runs{where}", args).fetchone()[0])

    def event_page(
        self,
        run_id: int,
        filters: EventFilter | None = None,
        after: int = 0,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Event]:
        # Keyset: counter > after rides the (run_id, ..., counter) indexes; no OFFSET scan.
        where, args = self._where(run_id, filters or EventFilter())
        db = self._reader()
        row = db.execute("SELECT uuid FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return []
        rows = db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} AND counter > ? "
            "ORDER BY counter LIMIT ? OFFSET ?",
            [*args, after, limit, offset],
        ).fetchall()
        return [_event(row[0], r) for r in rows]

    def last_event(self, run_id: int, filters: EventFilter | None = None) -> Event | None:
        where, args = self._where(run_id, filters or EventFilter())
        db = self._reader()
        run = db.execute("SELECT uuid FROM runs WHERE id=?", (run_id,)).fetchone()
        if run is None:
            return None
        row = db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY counter DESC LIMIT 1",
            args,
        ).fetchone()
        return None if row is None else _event(run[0], row)

    def max_counter(self, run_id: int) -> int:
        row = (
            self._reader()
            .execute("SELECT MAX(counter) FROM events WHERE run_id=?", (run_id,))
            .fetchone()
        )
        return int(row[0] or 0)

    def stdout_line_offsets(self, run_id: int, counters: Sequence[int]) -> dict[int, int]:
        db = self._reader()
        lines = "CASE WHEN stdout = '' THEN 0 ELSE length(stdout) - length(replace(stdout, char(10), '')) + 1 END"  # noqa: E501

        def block_sums(first: int, last: int) -> list[tuple[int, int, int]]:
            return db.execute(
                f"SELECT (counter - 1) / ?, COUNT(*), SUM({lines}) FROM events "
                "WHERE run_id = ? AND counter BETWEEN ? AND ? GROUP BY 1 ORDER BY 1",
                (self._line_marks.block, run_id, first, last),
            ).fetchall()

        def window(after: int, wanted: Sequence[int]) -> dict[int, int]:
            marks = ",".join("?" * len(wanted))
            rows = db.execute(
                f"""SELECT counter, before FROM (
                SELECT counter, SUM(n) OVER (ORDER BY counter ROWS UNBOUNDED PRECEDING) - n
                       AS before
                FROM (SELECT counter, {lines} AS n
                      FROM events WHERE run_id = ? AND counter > ? AND counter <= ?)
            ) WHERE counter IN ({marks})""",
                [run_id, after, wanted[-1], *wanted],
            ).fetchall()
            return {int(c): int(b) for c, b in rows}

        return self._line_marks.offsets(run_id, counters, block_sums, window)

    def open_runs(self, limit: int = 1000) -> list[RunLag]:
        db = self._reader()
        rows = db.execute(
            "SELECT id, uuid, emitted, stored FROM runs "
            "WHERE status = 'running' OR (emitted IS NOT NULL AND stored < emitted) "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            RunLag(rid, uuid, emitted, stored, self.max_counter(rid))
            for rid, uuid, emitted, stored in rows
        ]

    def pool_stats(self) -> PoolStats:
        return PoolStats(in_use=1, size=1)  # the one writer connection, always open

    # host summaries, one page at a time, and a host's runs

    def host_totals(self, run_id: int) -> HostTotals | None:
        sums = ", ".join(f"COALESCE(SUM(h.{f}), 0)" for f in SUMMARY_FIELDS)
        row = (
            self._reader()
            .execute(
                "SELECT r.stats_counter, COUNT(h.host), "
                f"COALESCE(SUM(h.failures > 0 OR h.dark > 0), 0), {sums} "
                "FROM runs r LEFT JOIN host_summaries h ON h.run_id = r.id "
                "WHERE r.id = ? GROUP BY r.id",
                (run_id,),
            )
            .fetchone()
        )
        if row is None or not row[0]:
            return None
        return HostTotals(*(int(v) for v in row[1:]))

    def host_summary_page(
        self, run_id: int, limit: int, offset: int = 0, failed_only: bool = False
    ) -> list[HostSummary]:
        bad = " AND (failures > 0 OR dark > 0)" if failed_only else ""
        rows = (
            self._reader()
            .execute(
                f"SELECT {SUMMARY_COLUMNS} FROM host_summaries WHERE run_id = ?{bad} "
                "ORDER BY host LIMIT ? OFFSET ?",
                (run_id, limit, offset),
            )
            .fetchall()
        )
        return [HostSummary(*r) for r in rows]

    def host_summary(self, run_id: int, host: str) -> HostSummary | None:
        row = (
            self._reader()
            .execute(
                f"SELECT {SUMMARY_COLUMNS} FROM host_summaries WHERE run_id = ? AND host = ?",
                (run_id, host),
            )
            .fetchone()
        )
        return HostSummary(*row) if row else None

    def host_runs(self, host: str, limit: int, before_id: int | None = None) -> list[HostRun]:
        db = self._reader()
        below = before_id if before_id is not None else 1 << 62
        # Runs without a recap first (partial index runs_no_recap, then one seek each in
        # events_host): a recap stored in between is then found by the second query.
        found: dict[int, HostSummary | None] = {
            rid: None
            for (rid,) in db.execute(
                "SELECT r.id FROM (SELECT id FROM runs WHERE stats_counter = 0 AND id < ? "
                "ORDER BY id DESC LIMIT ?) r "
                "WHERE EXISTS (SELECT 1 FROM events e WHERE e.run_id = r.id AND e.host = ?)",
                (below, RECAPLESS_CHECKED, host),
            )
        }
        for rid, *summary in db.execute(
            f"SELECT run_id, {SUMMARY_COLUMNS} FROM host_summaries "
            "WHERE host = ? AND run_id < ? ORDER BY run_id DESC LIMIT ?",
            (host, below, limit),
        ):
            found[rid] = HostSummary(*summary)
        ids = sorted(found, reverse=True)[:limit]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({marks}) ORDER BY id DESC", ids
        ).fetchall()
        return [HostRun(run, found[run.id]) for run in (self._run_row(r, db) for r in rows)]

    # tokens

    def add_token(self, name: str, scope: str, digest: str, prefix: str, created: str) -> TokenRow:
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO tokens (name, scope, digest, prefix, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, scope, digest, prefix, created),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"a token named {name!r} exists already; revoke it first") from exc
            except sqlite3.OperationalError as exc:
                raise StoreBusy(f"{self.path}: {exc}") from exc
            return TokenRow(int(cursor.lastrowid or 0), name, scope, prefix, created)

    _TOKEN_COLUMNS = "id, name, scope, prefix, created, revoked"

    def tokens(self) -> list[TokenRow]:
        rows = self._reader().execute(f"SELECT {self._TOKEN_COLUMNS} FROM tokens ORDER BY id")
        return [TokenRow(*r) for r in rows.fetchall()]

    def token_by_digest(self, digest: str) -> TokenRow | None:
        row = (
            self._reader()
            .execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE digest=? AND revoked IS NULL",
                (digest,),
            )
            .fetchone()
        )
        return TokenRow(*row) if row else None

    def revoke_token(self, ref: str, when: str) -> TokenRow:
        column = "id" if ref.isdigit() else "name"
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE {column}=? AND revoked IS NULL",
                (int(ref) if ref.isdigit() else ref,),
            ).fetchone()
            if row is None:
                raise TokenNotFound(f"no active token {ref!r}")
            self._db.execute("UPDATE tokens SET revoked=? WHERE id=?", (when, row[0]))
        rid, name, scope, prefix, created, _ = row
        return TokenRow(rid, name, scope, prefix, created, revoked=when)
