"""Where the shipper delivers: the store directly, `playledger serve` over HTTP, or a NATS
JetStream stream drained by `playledger worker`s.

A sink is the write side of a store: an atomic, idempotent batch ingest, and marking a run whose
writer died without its final record. Every `Store` is a sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from playledger.events import Event, RunEnd, RunStart
from playledger.settings import NATS_SCHEMES, Settings
from playledger.store.base import IngestResult


class Sink(Protocol):
    def ingest(self, records: Sequence[RunStart | Event | RunEnd]) -> IngestResult:
        """Commit the batch (all or nothing) before returning; duplicates are counted."""
        ...

    def mark_aborted(self, run_uuid: str) -> None: ...

    def close(self) -> None: ...


class RemoteSink(Sink, Protocol):
    """A sink in front of a store this process cannot open: `playledger run` asks it."""

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None: ...

    def verify(self, run_uuid: str) -> dict[str, Any]:
        """The store's verify report of the run, with `hosts`."""
        ...


def open_remote_sink(settings: Settings) -> RemoteSink:
    """PLAYLEDGER_SINK=nats://... (NATS JetStream) or http(s)://... (`playledger serve`)."""
    if settings.sink.startswith(NATS_SCHEMES):
        from playledger.sinks.nats import NatsSink

        return NatsSink(
            settings.sink,
            stream=settings.nats_stream,
            subject=settings.nats_subject,
            consumer=settings.nats_consumer,
            timeout=settings.nats_timeout,
            confirm_timeout=settings.nats_confirm_timeout,
        )
    from playledger.sinks.http import HttpSink

    return HttpSink(
        settings.sink,
        settings.token,
        timeout=settings.http_timeout,
        max_batch_bytes=settings.max_batch_bytes,
        max_batch_records=settings.max_batch_records,
    )


def open_sink(settings: Settings) -> Sink:
    """The configured sink: PLAYLEDGER_SINK (HTTP or NATS) or, when empty, the store itself."""
    if settings.sink:
        return open_remote_sink(settings)
    from playledger.store import open_store

    return open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
