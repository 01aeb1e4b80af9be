"""The Store protocol and the plain rows it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from playledger.events import Event, RunEnd, RunStart

SUMMARY_FIELDS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")
# host_runs(): how many of the newest runs without a recap (running, killed) are checked for a
# host's events, one seek each in the (run_id, host, counter) index; older ones are not found.
RECAPLESS_CHECKED = 100


@dataclass(frozen=True)
class RunRow:
    id: int
    uuid: str
    playbook: str
    status: str  # running | successful | failed | aborted
    started: str
    finished: str | None
    emitted: int | None  # from the run's final record; None until it is stored
    stored: int
    hosts: int
    exit_code: int | None
    controller: str
    user: str
    cwd: str
    argv: list[str]
    ansible_version: str
    append_errors: int = 0  # events the callback failed to append (from the final record)


@dataclass(frozen=True)
class EventRow:
    run_id: int
    event: Event


@dataclass(frozen=True)
class HostSummary:
    host: str
    ok: int
    changed: int
    failures: int
    dark: int
    skipped: int
    rescued: int
    ignored: int


@dataclass(frozen=True)
class HostTotals:
    """Sums over every host summary of a run (computed in SQL, not from loaded rows)."""

    hosts: int
    failed_hosts: int  # hosts with failures or unreachable
    ok: int
    changed: int
    failures: int
    dark: int
    skipped: int
    rescued: int
    ignored: int


@dataclass(frozen=True)
class HostRun:
    """A run a host took part in; `summary` is its recap line, None when the run has no recap
    (running, killed) and the host is known from its events only."""

    run: RunRow
    summary: HostSummary | None


@dataclass(frozen=True)
class IngestResult:
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class PurgeResult:
    """What `purge` removed: whole runs (with their events and host summaries)."""

    runs: int
    events: int
    partitions: list[str]  # PostgreSQL: the day partitions dropped whole; SQLite: none


@dataclass(frozen=True)
class EventFilter:
    host: str | None = None
    event: str | None = None
    task: str | None = None
    failed: bool | None = None
    changed: bool | None = None
    min_counter: int | None = None
    max_counter: int | None = None
    # A substring of `stdout`, case-insensitive (SQLite folds ASCII letters only; PostgreSQL
    # folds as its ILIKE does under the database's locale). '' matches every event.
    text: str | None = None


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape character backslash) matching `text` anywhere, literally:
    `%`, `_` and the backslash itself lose their pattern meaning."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --- read API rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunQuery:
    """Filters for listing runs, newest first; `before_id` is the keyset cursor (id < it)."""

    status: str | None = None
    playbook: str | None = None  # substring of the playbook path
    since: str | None = None  # started >= this ISO time
    until: str | None = None  # started < this ISO time
    before_id: int | None = None


@dataclass(frozen=True)
class RunLag:
    """A run not yet fully stored: its final record has not arrived or events are missing."""

    id: int
    uuid: str
    emitted: int | None
    stored: int
    max_counter: int

    @property
    def lag(self) -> int:
        """emitted - stored once the final record is in; before it, holes below max_counter."""
        return (self.emitted if self.emitted is not None else self.max_counter) - self.stored


@dataclass(frozen=True)
class PoolStats:
    in_use: int
    size: int  # writer connections; the API runs this many writer threads


TOKEN_SCOPES = ("ingest", "read", "admin")


@dataclass(frozen=True)
class TokenRow:
    id: int
    name: str
    scope: str  # ingest | read | admin (admin implies the others)
    prefix: str  # the first characters of the token, to recognise it; never the token
    created: str
    revoked: str | None = None


class Store(Protocol):
    """What every backend provides. Writes are idempotent on (run, counter)."""

    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        """Commit a batch atomically; a record already stored is counted, not stored twice."""
        ...

    def ingest_many(
        self, batches: Sequence[Sequence[RunStart | Event | RunEnd]]
    ) -> list[IngestResult]:
        """Commit several batches in one transaction (one durable commit; the server groups
        the batches waiting for its writer): all or nothing, one result per batch."""
        ...

    def mark_aborted(self, run_uuid: str) -> None:
        """The run's writer died without a final record and its spool is fully drained."""
        ...

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None: ...

    def purge(self, before: datetime) -> PurgeResult:
        """Remove the runs recorded before `before` (an aware datetime) and all they hold."""
        ...

    def runs(self, limit: int = 50) -> list[RunRow]: ...

    def run(self, ref: str) -> RunRow:
        """A run by numeric id, uuid or 'latest'; raises RunNotFound."""
        ...

    def events(
        self, run_id: int, filters: EventFilter | None = None, limit: int | None = None
    ) -> Iterator[Event]: ...

    def count_events(self, run_id: int, filters: EventFilter | None = None) -> int: ...

    def counters(self, run_id: int) -> Iterator[int]:
        """Stored counters in order (for gap detection)."""
        ...

    def duplicate_uuids(self, run_id: int) -> int:
        """How many stored events share a uuid with another (should be 0)."""
        ...

    def host_summaries(self, run_id: int) -> list[HostSummary] | None:
        """From the run's stats event; None when no stats event is stored."""
        ...

    def host_totals(self, run_id: int) -> HostTotals | None:
        """Sums over all the run's host summaries; None when no stats event is stored."""
        ...

    def host_summary_page(
        self, run_id: int, limit: int, offset: int = 0, failed_only: bool = False
    ) -> list[HostSummary]:
        """Host summaries in host order (byte order), `offset` rows skipped; `failed_only`:
        hosts with failures or unreachable."""
        ...

    def host_summary(self, run_id: int, host: str) -> HostSummary | None:
        """One host's line of the run's recap."""
        ...

    def host_runs(self, host: str, limit: int, before_id: int | None = None) -> list[HostRun]:
        """The newest runs (highest id first, ids below `before_id`) in which `host` appears:
        in the recap (index on host_summaries (host, run_id)), or, for the RECAPLESS_CHECKED
        newest runs without a recap, by its events."""
        ...

    # --- read API ---------------------------------------------------------------------------
    # Called by the HTTP API from many threads at once; each call sees committed data only.

    def list_runs(self, query: RunQuery, limit: int) -> list[RunRow]:
        """Runs matching `query`, newest (highest id) first, at most `limit`."""
        ...

    def count_runs(self, query: RunQuery) -> int:
        """How many runs match `query` (its `before_id` is ignored)."""
        ...

    def event_page(
        self,
        run_id: int,
        filters: EventFilter | None = None,
        after: int = 0,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Event]:
        """Up to `limit` events with counter > `after`, in counter order (keyset pagination).

        `offset` skips that many more matches (AWX page numbers); keyset is the fast path.
        """
        ...

    def last_event(self, run_id: int, filters: EventFilter | None = None) -> Event | None:
        """The matching event with the highest counter (keyset, descending: "previous match"
        is `max_counter=N - 1`); None when nothing matches."""
        ...

    def max_counter(self, run_id: int) -> int:
        """The highest stored counter of the run (0 when none)."""
        ...

    def stdout_line_offsets(self, run_id: int, counters: Sequence[int]) -> dict[int, int]:
        """Lines of job output before each of `counters` (AWX start_line): every event with a
        non-empty stdout contributes its line count. One scan up to max(counters)."""
        ...

    def open_runs(self, limit: int = 1000) -> list[RunLag]:
        """Runs still running, or finished with fewer events stored than emitted."""
        ...

    def pool_stats(self) -> PoolStats:
        """Writer connections in use / available (SQLite: one writer, always open)."""
        ...

    # tokens: only a digest of each token is stored

    def add_token(self, name: str, scope: str, digest: str, prefix: str, created: str) -> TokenRow:
        """Store a new token's digest; names are unique among tokens not revoked."""
        ...

    def tokens(self) -> list[TokenRow]: ...

    def token_by_digest(self, digest: str) -> TokenRow | None:
        """The token with this digest unless it is revoked."""
        ...

    def revoke_token(self, ref: str, when: str) -> TokenRow:
        """Revoke by id or name; raises TokenNotFound."""
        ...

    def close(self) -> None: ...
