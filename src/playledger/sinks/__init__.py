"""Where the shipper delivers: the store directly, or `playledger serve` over HTTP (NATS next).

A sink is the write side of a store: an atomic, idempotent batch ingest, and marking a run whose
writer died without its final record. Every `Store` is a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from playledger.events import Event, RunEnd, RunStart
from playledger.settings import Settings
from playledger.store.base import IngestResult


class Sink(Protocol):
    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        """Commit the batch (all or nothing) before returning; duplicates are counted."""
        ...

    def mark_aborted(self, run_uuid: str) -> None: ...

    def close(self) -> None: ...


def open_sink(settings: Settings) -> Sink:
    """The configured sink: PLAYLEDGER_SINK=http(s)://... or, when empty, the store itself."""
    if settings.sink:
        from playledger.sinks.http import HttpSink

        return HttpSink(
            settings.sink,
            settings.token,
            timeout=settings.http_timeout,
            max_batch_bytes=settings.max_batch_bytes,
            max_batch_records=settings.max_batch_records,
        )
    from playledger.store import open_store

    return open_store(settings.db, settings.busy_timeout)
