"""Where the shipper delivers: the store directly, or (next) HTTP and NATS.

A sink is the write side of a store: an atomic, idempotent batch ingest, and marking a run whose
writer died without its final record. Every `Store` is a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from playledger.events import Event, RunEnd, RunStart
from playledger.store.base import IngestResult


class Sink(Protocol):
    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        """Commit the batch (all or nothing) before returning; duplicates are counted."""
        ...

    def mark_aborted(self, run_uuid: str) -> None: ...

    def close(self) -> None: ...
