"""The PostgreSQL store: a bounded connection pool, batched COPY ingest, day partitions.

Semantics are the SQLite store's (one conformance suite runs on both): idempotent on
(run, counter), `stored` maintained in the ingest transaction, host summaries from the latest
stats event. Imported only when a postgresql:// URL is chosen.

Ingest, one transaction per batch: lock the batch's run rows (creating new ones), read which of
the batch's counters are already stored (one index range scan per run), then COPY (binary) only
the new events straight into `events`. Holding the run row lock serialises writers of the same
run, so the read-then-COPY is as idempotent as INSERT ... ON CONFLICT DO NOTHING, without a
staging table, a second copy of every row, or a conflict check per row.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from msgspec.structs import astuple
from psycopg import sql
from psycopg_pool import ConnectionPool

from playledger.errors import RunNotFound, StoreBusy, StoreError
from playledger.events import Event, RunEnd, RunStart
from playledger.store import pg_schema
from playledger.store.base import (
    SUMMARY_FIELDS,
    EventFilter,
    HostSummary,
    IngestResult,
    PurgeResult,
    RunRow,
)

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

RUN_COLUMNS = (
    "id, uuid, playbook, status, started, finished, emitted, stored, hosts, exit_code, "
    'controller, "user", cwd, argv, ansible_version, append_errors, run_day'
)
EVENT_FIELDS = Event.__struct_fields__[1:]  # every field but `run` (stored as run_id)
EVENT_COLUMNS = ", ".join(EVENT_FIELDS) + ", original"
_TEXT_AT = tuple(  # positions in astuple(event) of the str fields (NUL check)
    i
    for i, name in enumerate(Event.__struct_fields__)
    if name not in ("run", "counter", "changed", "failed", "event_data")
)
# Binary COPY sends a text value as its UTF-8 bytes, so event_data (msgspec.Raw, JSON bytes) is
# handed to the bytea dumper: the server reads the same bytes into the text column, no decode.
_COPY_TYPES = ["int8", "date"] + [
    {"counter": "int8", "changed": "bool", "failed": "bool", "event_data": "bytea"}.get(n, "text")
    for n in EVENT_FIELDS
] + ["bytea"]
_COPY = f"COPY events (run_id, run_day, {EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"

# SQLSTATE classes worth a retry: connection (08), transaction rollback: serialization failure
# and deadlock (40), insufficient resources (53), operator intervention: admin shutdown, cannot
# connect now, cancel (57), system I/O error (58); and lock_timeout (55P03).
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES = ("55P03",)


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1@", url)


def _translate(exc: psycopg.Error, where: str) -> StoreError:
    state = exc.sqlstate
    transient = (
        (state is None and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)))
        or (state is not None and state[:2] in _TRANSIENT_CLASSES)
        or state in _TRANSIENT_STATES
    )
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if transient:
        return StoreBusy(f"{where}: PostgreSQL unavailable: {message}")
    return StoreError(f"{where}: {message}")


def _parse_time(created: str) -> datetime:
    """The record's time (UTC); an unreadable one counts as now rather than failing the batch."""
    try:
        t = datetime.fromisoformat(created)
    except ValueError:
        return datetime.now(UTC)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _event_row(run_id: int, day: date, e: Event) -> tuple[Any, ...]:
    t = astuple(e)
    for i in _TEXT_AT:
        value = t[i]
        if value is not None and "\x00" in value:
            # PostgreSQL text cannot hold NUL: keep the event whole in `original` (read back
            # from there, so the hash chain still verifies) and U+FFFD in the text columns.
            clean = tuple(
                v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in t[1:]
            )
            return (run_id, day, *clean, msgspec.json.encode(e))
    return (run_id, day, *t[1:], None)


def _event(run_uuid: str, r: tuple[Any, ...]) -> Event:
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


@dataclass
class _Batch:
    """A batch regrouped: events by run (one COPY each) and, in order, what changes run rows."""

    first_seen: dict[str, str] = field(default_factory=dict)  # run uuid -> created
    events: dict[str, list[Event]] = field(default_factory=dict)
    ops: list[RunStart | RunEnd | Event] = field(default_factory=list)  # stats events too
    count: int = 0

    @classmethod
    def of(cls, records: Sequence[RunStart | Event | RunEnd]) -> _Batch:
        batch = cls()
        for r in records:
            batch.first_seen.setdefault(r.run, r.created)
            if isinstance(r, Event):
                batch.events.setdefault(r.run, []).append(r)
                batch.count += 1
                if r.event == "playbook_on_stats":
                    batch.ops.append(r)
            else:
                batch.ops.append(r)
        return batch


class PostgresStore:
    """Thread-safe: every call borrows a pooled connection for one statement or transaction."""

    def __init__(self, url: str, busy_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.path = display_url(url)
        self._busy_timeout = busy_timeout
        self._partitions: set[date] = set()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=busy_timeout,  # wait for a free connection at most this long
            kwargs={"autocommit": True},  # transactions are explicit: conn.transaction()
            configure=self._configure,
            check=ConnectionPool.check_connection,  # a server restart costs no failed batch
            name="playledger",
            open=False,
        )
        try:
            self._pool.open(wait=False)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open PostgreSQL store {self.path}: {exc}") from exc
        try:
            self._check_ready()
        except StoreBusy as exc:
            # Unreachable for now: checked again before the first use, so a shipper started
            # while the server restarts backs off and retries instead of exiting.
            log.warning("%s", exc)
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, conn: Conn) -> None:
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(int(self._busy_timeout * 1000))
        )

    @contextmanager
    def _raw(self) -> Iterator[Conn]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise _translate(exc, self.path) from exc

    def _check_ready(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            with self._raw() as conn:
                pg_schema.check_version(conn, self.path)
                self._partitions = set(pg_schema.list_partitions(conn))
            self._ready = True

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        if not self._ready:
            self._check_ready()
        with self._raw() as conn:
            yield conn

    # --- writes -----------------------------------------------------------------------------

    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        batch = _Batch.of(records)
        if not batch.first_seen:
            return IngestResult(0, 0)
        try:
            with self._conn() as conn:
                days = {_parse_time(c).date() for c in batch.first_seen.values()}
                for day in sorted(days - self._partitions):
                    pg_schema.create_partition(conn, day)
                    self._partitions.add(day)
                with conn.transaction():
                    inserted = self._ingest(conn, batch)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.CheckViolation):
                # "no partition of relation events found for row": dropped by a purge since
                # we cached it; forget what we know and let the caller retry.
                self._partitions.clear()
                self._ready = False
                raise StoreBusy(str(exc)) from exc
            raise
        return IngestResult(inserted, batch.count - inserted)

    def _ingest(self, conn: Conn, batch: _Batch) -> int:
        runs = self._lock_runs(conn, batch.first_seen)
        inserted = 0
        for run_uuid, events in batch.events.items():
            run_id, day = runs[run_uuid]
            n = self._insert_events(conn, run_id, day, events)
            if n:
                conn.execute("UPDATE runs SET stored = stored + %s WHERE id = %s", (n, run_id))
            inserted += n
        for op in batch.ops:
            run_id = runs[op.run][0]
            if isinstance(op, Event):
                self._apply_stats(conn, run_id, op)
            elif isinstance(op, RunStart):
                self._apply_start(conn, run_id, op)
            else:
                self._apply_end(conn, run_id, op)
        return inserted

    def _lock_runs(self, conn: Conn, first_seen: dict[str, str]) -> dict[str, tuple[int, date]]:
        """Lock the batch's run rows (in id order: no deadlock between batches), creating
        the new ones; writers of one run take turns from here to their commit."""
        select = "SELECT uuid, id, run_day FROM runs WHERE uuid = ANY(%s) ORDER BY id FOR UPDATE"
        found = {u: (i, d) for u, i, d in conn.execute(select, (list(first_seen),))}
        new = [u for u in first_seen if u not in found]
        if new:
            times = [_parse_time(first_seen[u]) for u in new]
            conn.execute(
                "INSERT INTO runs (uuid, recorded, run_day) "
                "SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::date[]) "
                "ON CONFLICT (uuid) DO NOTHING",
                (new, times, [t.date() for t in times]),
            )
            # Rows another batch created meanwhile are locked here; ours already are.
            found.update({u: (i, d) for u, i, d in conn.execute(select, (new,))})
        return found

    def _insert_events(self, conn: Conn, run_id: int, day: date, events: list[Event]) -> int:
        counters = [e.counter for e in events]
        lo, hi = min(counters), max(counters)
        if hi - lo < 4 * len(counters):
            cur = conn.execute(
                "SELECT counter FROM events WHERE run_id = %s AND run_day = %s "
                "AND counter BETWEEN %s AND %s",
                (run_id, day, lo, hi),
            )
        else:
            cur = conn.execute(
                "SELECT counter FROM events WHERE run_id = %s AND run_day = %s "
                "AND counter = ANY(%s)",
                (run_id, day, counters),
            )
        seen = {c for (c,) in cur}
        rows = []
        for e in events:
            if e.counter not in seen:  # also the second copy of a counter within the batch
                seen.add(e.counter)
                rows.append(_event_row(run_id, day, e))
        if rows:
            with conn.cursor().copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        return len(rows)

    def _apply_start(self, conn: Conn, run_id: int, r: RunStart) -> None:
        conn.execute(
            'UPDATE runs SET playbook=%s, started=%s, controller=%s, "user"=%s, cwd=%s, '
            "argv=%s, ansible_version=%s WHERE id=%s",
            (
                _text(r.playbook),
                _text(r.created),
                _text(r.controller),
                _text(r.user),
                _text(r.cwd),
                [_text(a) for a in r.argv],
                _text(r.ansible_version),
                run_id,
            ),
        )

    def _apply_stats(self, conn: Conn, run_id: int, e: Event) -> None:
        """The latest stats event of a run is its host summary (stats are cumulative)."""
        data = msgspec.json.decode(e.event_data)
        summary: dict[str, dict[str, int]] = (
            data.get("summary", {}) if isinstance(data, dict) else {}
        )
        cur = conn.execute(
            "UPDATE runs SET stats_counter=%s, hosts=%s WHERE id=%s AND stats_counter < %s",
            (e.counter, len(summary), run_id, e.counter),
        )
        if not cur.rowcount:
            return
        conn.execute("DELETE FROM host_summaries WHERE run_id=%s", (run_id,))
        if summary:
            with conn.cursor() as c:
                c.executemany(
                    f"INSERT INTO host_summaries (run_id, host, {', '.join(SUMMARY_FIELDS)}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (run_id, _text(host), *(int(counts.get(f, 0)) for f in SUMMARY_FIELDS))
                        for host, counts in summary.items()
                    ],
                )

    def _apply_end(self, conn: Conn, run_id: int, r: RunEnd) -> None:
        conn.execute(
            "UPDATE runs SET emitted=%s, finished=%s, append_errors=%s, "
            "status = CASE WHEN status <> 'running' THEN status WHEN EXISTS ("
            "SELECT 1 FROM host_summaries WHERE run_id=%s AND (failures > 0 OR dark > 0)) "
            "THEN 'failed' ELSE 'successful' END WHERE id=%s",
            (r.emitted, _text(r.created), r.append_errors, run_id, run_id),
        )

    def mark_aborted(self, run_uuid: str) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE runs SET status='aborted' WHERE uuid=%s AND emitted IS NULL", (run_uuid,)
            )

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None:
        with self._conn() as conn:
            conn.execute(
                "UPDATE runs SET exit_code=%s, status=CASE WHEN %s <> 0 AND status='successful' "
                "THEN 'failed' ELSE status END WHERE uuid=%s",
                (exit_code, exit_code, run_uuid),
            )

    def purge(self, before: datetime) -> PurgeResult:
        """Drop whole day partitions older than `before`; rows only for a cutoff mid-day."""
        before = before.astimezone(UTC)
        runs = events = 0
        dropped: list[str] = []
        with self._conn() as conn:
            for day, name in sorted(pg_schema.list_partitions(conn).items()):
                if datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) > before:
                    continue
                with conn.transaction():
                    rows = conn.execute(
                        "DELETE FROM runs WHERE run_day = %s RETURNING stored", (day,)
                    ).fetchall()
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                runs += len(rows)
                events += sum(r[0] for r in rows)
                dropped.append(name)
                self._partitions.discard(day)
            with conn.transaction():  # runs left before a mid-day cutoff (none at midnight)
                rows = conn.execute(
                    "DELETE FROM runs WHERE recorded < %s RETURNING id, run_day", (before,)
                ).fetchall()
                if rows:
                    cur = conn.execute(
                        "DELETE FROM events WHERE run_id = ANY(%s) AND run_day = ANY(%s)",
                        ([r[0] for r in rows], list({r[1] for r in rows})),
                    )
                    events += cur.rowcount
                runs += len(rows)
        return PurgeResult(runs=runs, events=events, partitions=dropped)

    # --- reads ------------------------------------------------------------------------------

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
        if f.host is not None:
            clauses.append("left(host, 200) = left(%s, 200) AND host = %s")
            args += [f.host, f.host]
        if f.event is not None:
            clauses.append("left(event, 200) = left(%s, 200) AND event = %s")
            args += [f.event, f.event]
        if f.task is not None:
            clauses.append("(task = %s OR task_uuid = %s)")
            args += [f.task, f.task]
        if f.failed is not None:
            clauses.append("failed = %s")
            args.append(f.failed)
        if f.changed is not None:
            clauses.append("changed = %s")
            args.append(f.changed)
        if f.min_counter is not None:
            clauses.append("counter >= %s")
            args.append(f.min_counter)
        if f.max_counter is not None:
            clauses.append("counter <= %s")
            args.append(f.max_counter)
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
        with self._conn() as conn:
            located = self._locate(conn, run_id)
            if located is None:
                return 0
            where, args = self._where(run_id, located[1], filters or EventFilter())
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
                "WHERE run_id=%s ORDER BY host COLLATE \"C\"",
                (run_id,),
            ).fetchall()
            return [HostSummary(*r) for r in rows]

    def close(self) -> None:
        self._pool.close()


def _text(value: str) -> str:
    """Run fields are not hash-covered: a NUL (which text cannot hold) becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def upgrade_schema(url: str) -> tuple[int, list[int]]:
    """Apply the missing migrations on one direct connection: (version before, applied)."""
    where = display_url(url)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return pg_schema.upgrade(conn, where)
    except psycopg.Error as exc:
        raise _translate(exc, where) from exc
