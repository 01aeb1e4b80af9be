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

from playledger.errors import RunConflict, StoreBusy, StoreError
from playledger.events import Event, RunEnd, RunStart
from playledger.store import pg_schema
from playledger.store.base import (
    SUMMARY_FIELDS,
    IngestResult,
    PoolStats,
    PurgeResult,
)
from playledger.store.lines import LineMarks
from playledger.store.pg_api import PostgresReadAPI
from playledger.store.pg_reads import EVENT_COLUMNS, EVENT_FIELDS, Conn

log = logging.getLogger(__name__)


_TEXT_AT = tuple(  # positions in astuple(event) of the str fields (NUL check)
    i
    for i, name in enumerate(Event.__struct_fields__)
    if name not in ("run", "counter", "changed", "failed", "event_data")
)
_INDEXED_AT = tuple(Event.__struct_fields__.index(n) for n in ("host", "event", "task"))
_CUT = pg_schema.INDEXED_MAX
# Binary COPY sends a text value as its UTF-8 bytes, so event_data (msgspec.Raw, JSON bytes) is
# handed to the bytea dumper: the server reads the same bytes into the text column, no decode.
_COPY_TYPES = (
    ["int8", "date"]
    + [
        {"counter": "int8", "changed": "bool", "failed": "bool", "event_data": "bytea"}.get(
            n, "text"
        )
        for n in EVENT_FIELDS
    ]
    + ["bytea"]
)
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


def _careful_row(run_id: int, day: date, e: Event) -> tuple[Any, ...]:
    """The row for the retry of a batch that PostgreSQL refused for a NUL or an index entry.

    Text cannot hold NUL, and a btree entry must stay under ~2.7 kB: such an event is kept
    whole in `original` (read back from there, so the hash chain still verifies), with U+FFFD
    for NUL and host/event/task cut to INDEXED_MAX characters in the columns. Checking every
    event up front would cost a fifth of the ingest rate for what almost never happens.
    """
    t = astuple(e)
    if any(t[i] is not None and len(t[i]) > _CUT for i in _INDEXED_AT) or any(
        t[i] is not None and "\x00" in t[i] for i in _TEXT_AT
    ):
        row = [v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in t]
        for i in _INDEXED_AT:
            if row[i] is not None:
                row[i] = row[i][:_CUT]
        return (run_id, day, *row[1:], msgspec.json.encode(e))
    return (run_id, day, *t[1:], None)


@dataclass
class _Batch:
    """A batch regrouped: events by run (one COPY each) and, in order, what changes run rows.

    The run-row changes (start, stats, end) are applied after the events, in batch order; none
    of them reads the events table, so the result is SQLite's record-by-record one.
    """

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


class PostgresStore(PostgresReadAPI):
    """Thread-safe: every call borrows a pooled connection for one statement or transaction."""

    def __init__(self, url: str, busy_timeout: float = 5.0, pool_size: int = 4) -> None:
        self.path = display_url(url)
        self._busy_timeout = busy_timeout
        self._partitions: set[date] = set()
        self._line_marks = LineMarks()
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
        conn.execute(sql.SQL("SET lock_timeout = {}").format(int(self._busy_timeout * 1000)))

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
        return self.ingest_many([records])[0]

    def ingest_many(
        self, batches: Sequence[Sequence[RunStart | Event | RunEnd]]
    ) -> list[IngestResult]:
        grouped = [_Batch.of(records) for records in batches]
        first_seen: dict[str, str] = {}
        for batch in grouped:
            for run, created in batch.first_seen.items():
                first_seen.setdefault(run, created)
        if not first_seen:
            return [IngestResult(0, 0) for _ in grouped]
        try:
            with self._conn() as conn:
                days = {_parse_time(c).date() for c in first_seen.values()}
                for day in sorted(days - self._partitions):
                    pg_schema.create_partition(conn, day)
                    self._partitions.add(day)
                try:
                    with conn.transaction():
                        inserted = self._ingest_all(conn, first_seen, grouped, careful=False)
                except (
                    psycopg.errors.CharacterNotInRepertoire,
                    psycopg.errors.ProgramLimitExceeded,
                ):
                    with conn.transaction():  # a NUL or an oversized index entry: see _careful_row
                        inserted = self._ingest_all(conn, first_seen, grouped, careful=True)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.CheckViolation):
                # "no partition of relation events found for row": dropped by a purge since
                # we cached it; forget what we know and let the caller retry.
                self._partitions.clear()
                self._ready = False
                raise StoreBusy(str(exc)) from exc
            raise
        return [
            IngestResult(n, batch.count - n) for n, batch in zip(inserted, grouped, strict=True)
        ]

    def _ingest_all(
        self, conn: Conn, first_seen: dict[str, str], batches: list[_Batch], careful: bool
    ) -> list[int]:
        # Every run row of every batch is locked first, in id order: two transactions that
        # group batches differently still lock in the same order (no deadlock).
        self._lock_runs(conn, first_seen)
        return [self._ingest(conn, batch, careful) for batch in batches]

    def _ingest(self, conn: Conn, batch: _Batch, careful: bool) -> int:
        runs = self._lock_runs(conn, batch.first_seen)
        inserted = 0
        for run_uuid, events in batch.events.items():
            run_id, day = runs[run_uuid]
            n = self._insert_events(conn, run_id, day, events, careful)
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

    def _insert_events(
        self, conn: Conn, run_id: int, day: date, events: list[Event], careful: bool
    ) -> int:
        counters = [e.counter for e in events]
        lo, hi = min(counters), max(counters)
        if hi - lo < 4 * len(counters):
            cur = conn.execute(
                "SELECT counter, hash FROM events WHERE run_id = %s AND run_day = %s "
                "AND counter BETWEEN %s AND %s",
                (run_id, day, lo, hi),
            )
        else:
            cur = conn.execute(
                "SELECT counter, hash FROM events WHERE run_id = %s AND run_day = %s "
                "AND counter = ANY(%s)",
                (run_id, day, counters),
            )
        known: dict[int, str] = dict(cur.fetchall())
        rows = []
        for e in events:
            stored = known.get(e.counter)
            if stored is None:
                known[e.counter] = e.hash
                if careful:
                    rows.append(_careful_row(run_id, day, e))
                else:
                    rows.append((run_id, day, *astuple(e)[1:], None))
            elif stored != e.hash:  # a duplicate must be the very same event
                raise RunConflict(
                    f"run {e.run}: counter {e.counter} is already stored as a different event; "
                    "was the run id reused (PLAYLEDGER_RUN_ID)? Nothing was stored from this "
                    "batch and the spool is kept"
                )
        if rows:
            with conn.cursor().copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        return len(rows)

    def _apply_start(self, conn: Conn, run_id: int, r: RunStart) -> None:
        row = conn.execute("SELECT started FROM runs WHERE id=%s", (run_id,)).fetchone()
        started = row[0] if row else ""
        if started and started != _text(r.created):
            raise RunConflict(
                f"run {r.run} was already started at {started} (this one at {r.created}); "
                "was the run id reused (PLAYLEDGER_RUN_ID)? The spool is kept"
            )
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

    def pool_stats(self) -> PoolStats:
        stats = self._pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return PoolStats(in_use=max(in_use, 0), size=self._pool.max_size)

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
