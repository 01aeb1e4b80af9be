"""The Store protocol and the plain rows it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from playledger.events import Event, RunEnd, RunStart

SUMMARY_FIELDS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")


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
class IngestResult:
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class EventFilter:
    host: str | None = None
    event: str | None = None
    task: str | None = None
    failed: bool | None = None
    changed: bool | None = None
    min_counter: int | None = None
    max_counter: int | None = None


class Store(Protocol):
    """What every backend provides. Writes are idempotent on (run, counter)."""

    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        """Commit a batch atomically; a record already stored is counted, not stored twice."""
        ...

    def mark_aborted(self, run_uuid: str) -> None:
        """The run's writer died without a final record and its spool is fully drained."""
        ...

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None: ...

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

    def close(self) -> None: ...
