"""The PostgreSQL store's reads: a mixin of `PostgresStore`.

Every query about a run's events names the run's partition (`run_day`, from its run row), so
PostgreSQL reads one partition whatever the number of days kept. Each call borrows a pooled
connection and gives it back before returning (or, for iterators, before yielding a page).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import date
from typing import Any

import msgspec
import psycopg

from playledger.errors import RunNotFound
from playledger.events import Event
from playledger.store.base import SUMMARY_FIELDS, EventFilter, HostSummary, RunRow, like_pattern
from playledger.store.pg_schema import INDEXED_MAX as _CUT

Conn = psycopg.Connection[tuple[Any, ...]]

RUN_COLUMNS = (
    "id, uuid, playbook, status, started, finished, emitted, stored, hosts, exit_code, "
    'controller, "user", cwd, argv, ansible_version, append_errors, run_day'
)
EVENT_FIELDS = Event.__struct_fields__[1:]  # every field but `run` (stored as run_id)
EVENT_COLUMNS = ", ".join(EVENT_FIELDS) + ", original"


def _event(run_uuid: str, r: tuple[Any, ...]) -> Event:
    """An Event from a row selected as EVENT_COLUMNS (`original` wins when present)."""
    if r[19] is not None:
        return msgspec.json.decode(r[19], type=Event)
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
        changed=r[13],
        failed=r[14],
        stdout=r[15],
        event_data=msgspec.Raw(r[16].encode()),
        prev_hash=r[17],
        hash=r[18],
    )


class PostgresReads:
    path: str

    def _conn(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _run_row(self, conn: Conn, row: tuple[Any, ...]) -> RunRow:
        (rid, uuid, playbook, status, started, finished, emitted, stored, hosts, exit_code,
         controller, user, cwd, argv, ansible_version, append_errors, day) = row  # fmt: skip
        if hosts is None:
            counted = conn.execute(
                "SELECT COUNT(DISTINCT host) FROM events WHERE run_id = %s AND run_day = %s "
                "AND host IS NOT NULL",
                (rid, day),
            ).fetchone()
            hosts = counted[0] if counted else 0
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
            argv=list(argv),
            ansible_version=ansible_version,
            append_errors=append_errors,
        )

    def runs(self, limit: int = 50) -> list[RunRow]:
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT %s", (limit,)
            ).fetchall()
            return [self._run_row(conn, r) for r in rows]

    def run(self, ref: str) -> RunRow:
        with self._conn() as conn:
            if ref == "latest":
                row = conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT 1"
                ).fetchone()
            elif ref.isdigit():
                row = conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE id=%s", (int(ref),)
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs WHERE uuid=%s", (ref,)
                ).fetchone()
            if row is None:
                what = "no runs recorded yet" if ref == "latest" else f"no run {ref!r}"
                raise RunNotFound(f"{what} in {self.path}")
            return self._run_row(conn, row)

    def _locate(self, conn: Conn, run_id: int) -> tuple[str, date] | None:
        """The run's uuid and partition day (every events query names its partition)."""
        row = conn.execute("SELECT uuid, run_day FROM runs WHERE id=%s", (run_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def _where(run_id: int, day: date, f: EventFilter) -> tuple[str, list[Any]]:
        clauses = ["run_id = %s", "run_day = %s"]
        args: list[Any] = [run_id, day]
        # host, event and task are stored cut to INDEXED_MAX characters (see _event_row)
        if f.host is not None:
            clauses.append("host = %s")
            args.append(f.host[:_CUT])
        if f.event is not None:
            clauses.append("event = %s")
            args.append(f.event[:_CUT])
        if f.task is not None:
            clauses.append("(task = %s OR task_uuid = %s)")
            args += [f.task[:_CUT], f.task]
        # Literals, not parameters: a prepared (generic) plan can use the partial indexes
        # `WHERE failed` / `WHERE changed` only when the query says so in its text.
        if f.failed is not None:
            clauses.append("failed" if f.failed else "NOT failed")
        if f.changed is not None:
            clauses.append("changed" if f.changed else "NOT changed")
        if f.min_counter is not None:
            clauses.append("counter >= %s")
            args.append(f.min_counter)
        if f.max_counter is not None:
            clauses.append("counter <= %s")
            args.append(f.max_counter)
        if f.text is not None:
            clauses.append("stdout ILIKE %s ESCAPE '\\'")
            args.append(like_pattern(f.text))
        return " AND ".join(clauses), args

    def events(
        self, run_id: int, filters: EventFilter | None = None, limit: int | None = None
    ) -> Iterator[Event]:
        """Read in keyset pages, each on a borrowed connection given back before yielding:
        a million-event run is never held in memory, and a slow reader holds no connection."""
        with self._conn() as conn:
            located = self._locate(conn, run_id)
        if located is None:
            raise RunNotFound(f"no run {run_id} in {self.path}")
        uuid, day = located
        where, args = self._where(run_id, day, filters or EventFilter())
        query = (
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} AND counter > %s "
            "ORDER BY counter LIMIT %s"
        )
        after, left = 0, limit
        while left is None or left > 0:
            page = 1000 if left is None else min(1000, left)
            with self._conn() as conn:
                rows = conn.execute(query, (*args, after, page)).fetchall()
            for r in rows:
                yield _event(uuid, r)
            if len(rows) < page:
                return
            after = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def count_events(self, run_id: int, filters: EventFilter | None = None) -> int:
        f = filters or EventFilter()
        with self._conn() as conn:
            if f == EventFilter():  # the per-run counter kept in each ingest transaction: no scan
                row = conn.execute("SELECT stored FROM runs WHERE id=%s", (run_id,)).fetchone()
                return int(row[0]) if row else 0
            located = self._locate(conn, run_id)
            if located is None:
                return 0
            where, args = self._where(run_id, located[1], f)
            row = conn.execute(f"SELECT COUNT(*) FROM events WHERE {where}", args).fetchone()
            return int(row[0]) if row else 0

    def counters(self, run_id: int) -> Iterator[int]:
        with self._conn() as conn:
            located = self._locate(conn, run_id)
        if located is None:
            return
        after = 0
        while True:
            with self._conn() as conn:
                rows = conn.execute(
                    "SELECT counter FROM events WHERE run_id=%s AND run_day=%s AND counter > %s "
                    "ORDER BY counter LIMIT 10000",
                    (run_id, located[1], after),
                ).fetchall()
            for (counter,) in rows:
                yield counter
            if len(rows) < 10000:
                return
            after = rows[-1][0]

    def duplicate_uuids(self, run_id: int) -> int:
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return 0
            row = conn.execute(
                "SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT COUNT(*) AS n FROM events "
                "WHERE run_id=%s AND run_day=%s GROUP BY uuid HAVING COUNT(*) > 1) d",
                (run_id, located[1]),
            ).fetchone()
            return int(row[0]) if row else 0

    def host_summaries(self, run_id: int) -> list[HostSummary] | None:
        with self._conn() as conn:
            has_stats = conn.execute(
                "SELECT stats_counter FROM runs WHERE id=%s", (run_id,)
            ).fetchone()
            if not has_stats or not has_stats[0]:
                return None
            rows = conn.execute(
                f"SELECT host, {', '.join(SUMMARY_FIELDS)} FROM host_summaries "
                'WHERE run_id=%s ORDER BY host COLLATE "C"',
                (run_id,),
            ).fetchall()
            return [HostSummary(*r) for r in rows]
