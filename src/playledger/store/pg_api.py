"""The PostgreSQL store's read API (HTTP API reads, metrics) and token table.

The counterpart of sqlite_api.py, with the same semantics; a mixin of `PostgresStore`. Every
call borrows a pooled connection and sees committed data only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from playledger.errors import StoreError, TokenNotFound
from playledger.events import Event
from playledger.store.base import (
    RECAPLESS_CHECKED,
    SUMMARY_FIELDS,
    EventFilter,
    HostRun,
    HostSummary,
    HostTotals,
    RunLag,
    RunQuery,
    RunRow,
    TokenRow,
)
from playledger.store.lines import LineMarks
from playledger.store.pg_reads import EVENT_COLUMNS, RUN_COLUMNS, PostgresReads, _event
from playledger.store.pg_schema import INDEXED_MAX, SUMMARY_HOST_CHARS, SUMMARY_HOST_KEY

_TOKEN_COLUMNS = "id, name, scope, prefix, created, revoked"
_SUMMARY_COLUMNS = "host, " + ", ".join(SUMMARY_FIELDS)


class PostgresReadAPI(PostgresReads):
    _line_marks: LineMarks  # AWX start_line block sums, see store/lines.py

    @staticmethod
    def _run_where(q: RunQuery, keyset: bool) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if q.status is not None:
            clauses.append("status = %s")
            args.append(q.status)
        if q.playbook is not None:
            clauses.append("strpos(playbook, %s) > 0")
            args.append(q.playbook)
        if q.since is not None:  # `started` is COLLATE "C": ISO times compare as bytes
            clauses.append("started >= %s")
            args.append(q.since)
        if q.until is not None:
            clauses.append("started < %s")
            args.append(q.until)
        if keyset and q.before_id is not None:
            clauses.append("id < %s")
            args.append(q.before_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list_runs(self, query: RunQuery, limit: int) -> list[RunRow]:
        where, args = self._run_where(query, keyset=True)
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs{where} ORDER BY id DESC LIMIT %s", [*args, limit]
            ).fetchall()
            return [self._run_row(conn, r) for r in rows]

    def count_runs(self, query: RunQuery) -> int:
        where, args = self._run_where(query, keyset=False)
        with self._conn() as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM runs{where}", args).fetchone()
            return int(row[0]) if row else 0

    def event_page(
        self,
        run_id: int,
        filters: EventFilter | None = None,
        after: int = 0,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Event]:
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return []
            uuid, day = located
            where, args = self._where(run_id, day, filters or EventFilter())
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} AND counter > %s "
                "ORDER BY counter LIMIT %s OFFSET %s",
                [*args, after, limit, offset],
            ).fetchall()
        return [_event(uuid, r) for r in rows]

    def last_event(self, run_id: int, filters: EventFilter | None = None) -> Event | None:
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return None
            uuid, day = located
            where, args = self._where(run_id, day, filters or EventFilter())
            row = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY counter DESC LIMIT 1",
                args,
            ).fetchone()
        return None if row is None else _event(uuid, row)

    def max_counter(self, run_id: int) -> int:
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return 0
            row = conn.execute(
                "SELECT MAX(counter) FROM events WHERE run_id = %s AND run_day = %s",
                (run_id, located[1]),
            ).fetchone()
            return int(row[0] or 0) if row else 0

    def stdout_line_offsets(self, run_id: int, counters: Sequence[int]) -> dict[int, int]:
        if not counters:
            return {}
        lines = "CASE WHEN stdout = '' THEN 0 ELSE length(stdout) - length(replace(stdout, chr(10), '')) + 1 END"  # noqa: E501
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return {}
            day = located[1]

            def block_sums(first: int, last: int) -> list[tuple[int, int, int]]:
                return conn.execute(
                    f"SELECT (counter - 1) / %s, COUNT(*), SUM({lines}) FROM events "
                    "WHERE run_id = %s AND run_day = %s AND counter BETWEEN %s AND %s "
                    "GROUP BY 1 ORDER BY 1",
                    (self._line_marks.block, run_id, day, first, last),
                ).fetchall()

            def window(after: int, wanted: Sequence[int]) -> dict[int, int]:
                rows = conn.execute(
                    f"""SELECT counter, before FROM (
                        SELECT counter, SUM(n) OVER (ORDER BY counter ROWS UNBOUNDED PRECEDING)
                               - n AS before
                        FROM (SELECT counter, {lines} AS n FROM events
                              WHERE run_id = %s AND run_day = %s AND counter > %s
                              AND counter <= %s) c
                    ) b WHERE counter = ANY(%s)""",
                    (run_id, day, after, wanted[-1], list(wanted)),
                ).fetchall()
                return {int(c): int(b) for c, b in rows}

            return self._line_marks.offsets(run_id, counters, block_sums, window)

    def open_runs(self, limit: int = 1000) -> list[RunLag]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT r.id, r.uuid, r.emitted, r.stored, COALESCE((SELECT MAX(e.counter) "
                "FROM events e WHERE e.run_id = r.id AND e.run_day = r.run_day), 0) "
                "FROM runs r WHERE r.status = 'running' "
                "OR (r.emitted IS NOT NULL AND r.stored < r.emitted) "
                "ORDER BY r.id DESC LIMIT %s",
                (limit,),
            ).fetchall()
        return [
            RunLag(rid, uuid, emitted, stored, int(top)) for rid, uuid, emitted, stored, top in rows
        ]

    # host summaries, one page at a time, and a host's runs

    def host_totals(self, run_id: int) -> HostTotals | None:
        sums = ", ".join(f"COALESCE(SUM(h.{f}), 0)" for f in SUMMARY_FIELDS)
        with self._conn() as conn:
            row = conn.execute(
                "SELECT r.stats_counter, COUNT(h.host), "
                f"COUNT(*) FILTER (WHERE h.failures > 0 OR h.dark > 0), {sums} "
                "FROM runs r LEFT JOIN host_summaries h ON h.run_id = r.id "
                "WHERE r.id = %s GROUP BY r.id",
                (run_id,),
            ).fetchone()
        if row is None or not row[0]:
            return None
        return HostTotals(*(int(v) for v in row[1:]))

    def host_summary_page(
        self, run_id: int, limit: int, offset: int = 0, failed_only: bool = False
    ) -> list[HostSummary]:
        bad = " AND (failures > 0 OR dark > 0)" if failed_only else ""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM host_summaries WHERE run_id = %s{bad} "
                'ORDER BY host COLLATE "C" LIMIT %s OFFSET %s',
                (run_id, limit, offset),
            ).fetchall()
        return [HostSummary(*r) for r in rows]

    def host_summary(self, run_id: int, host: str) -> HostSummary | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM host_summaries WHERE run_id = %s AND host = %s",
                (run_id, _summary_host(host)),
            ).fetchone()
        return HostSummary(*row) if row else None

    def host_runs(self, host: str, limit: int, before_id: int | None = None) -> list[HostRun]:
        below = before_id if before_id is not None else 1 << 62
        with self._conn() as conn:
            # Runs without a recap first (partial index runs_no_recap, then one seek each in
            # the run's partition of events_host): a recap stored in between is then found by
            # the second query. Event rows hold host cut to INDEXED_MAX characters.
            found: dict[int, HostSummary | None] = {
                rid: None
                for (rid,) in conn.execute(
                    "SELECT r.id FROM (SELECT id, run_day FROM runs WHERE stats_counter = 0 "
                    "AND id < %s ORDER BY id DESC LIMIT %s) r WHERE EXISTS (SELECT 1 FROM "
                    "events e WHERE e.run_id = r.id AND e.run_day = r.run_day AND e.host = %s)",
                    (below, RECAPLESS_CHECKED, host[:INDEXED_MAX]),
                )
            }
            named = _summary_host(host)
            for rid, *summary in conn.execute(
                f"SELECT run_id, {_SUMMARY_COLUMNS} FROM host_summaries "
                f"WHERE {SUMMARY_HOST_KEY} = %s AND host = %s AND run_id < %s "
                "ORDER BY run_id DESC LIMIT %s",
                (named[:SUMMARY_HOST_CHARS], named, below, limit),
            ):
                found[rid] = HostSummary(*summary)
            ids = sorted(found, reverse=True)[:limit]
            if not ids:
                return []
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ANY(%s) ORDER BY id DESC", (ids,)
            ).fetchall()
            return [HostRun(run, found[run.id]) for run in (self._run_row(conn, r) for r in rows)]

    # tokens

    def add_token(self, name: str, scope: str, digest: str, prefix: str, created: str) -> TokenRow:
        with self._conn() as conn:
            try:
                row = conn.execute(
                    "INSERT INTO tokens (name, scope, digest, prefix, created) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (name, scope, digest, prefix, created),
                ).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise StoreError(f"a token named {name!r} exists already; revoke it first") from exc
        return TokenRow(int(row[0]) if row else 0, name, scope, prefix, created)

    def tokens(self) -> list[TokenRow]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY id").fetchall()
        return [TokenRow(*r) for r in rows]

    def token_by_digest(self, digest: str) -> TokenRow | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE digest=%s AND revoked IS NULL",
                (digest,),
            ).fetchone()
        return TokenRow(*row) if row else None

    def revoke_token(self, ref: str, when: str) -> TokenRow:
        column = "id" if ref.isdigit() else "name"
        with self._conn() as conn:
            row = conn.execute(
                f"UPDATE tokens SET revoked=%s WHERE {column}=%s AND revoked IS NULL "
                f"RETURNING {_TOKEN_COLUMNS}",
                (when, int(ref) if ref.isdigit() else ref),
            ).fetchone()
        if row is None:
            raise TokenNotFound(f"no active token {ref!r}")
        return TokenRow(*row)


def _summary_host(host: str) -> str:
    """Host names in host_summaries are stored with NUL as U+FFFD (text cannot hold NUL)."""
    return host.replace("\x00", "\ufffd")
