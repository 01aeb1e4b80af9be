"""Prometheus metrics of one server: a registry per app (tests build many apps side by side).

Values read from the store (per-run lag, writer pool) are collected at scrape time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from playledger.store.base import Store

log = logging.getLogger("playledger.api")

TEXT = "text/plain; version=0.0.4; charset=utf-8"
LAG_RUNS_SHOWN = 1000  # per-run lag series at most (newest open runs)


class _StoreCollector(Collector):
    def __init__(self, store: Store, queue_depth: Callable[[], int]) -> None:
        self._store = store
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
        pool = self._store.pool_stats()
        yield GaugeMetricFamily(
            "playledger_db_pool_in_use", "Store writer connections in use.", value=pool.in_use
        )
        yield GaugeMetricFamily(
            "playledger_db_pool_size", "Store writer connections available.", value=pool.size
        )
        lag = GaugeMetricFamily(
            "playledger_run_lag_events",
            "Per open run: events emitted (or, before the final record, the highest counter "
            "stored) minus events stored.",
            labels=["run"],
        )
        for run in self._store.open_runs(LAG_RUNS_SHOWN):
            lag.add_metric([run.uuid], run.lag)
        yield lag


class Metrics:
    def __init__(self, store: Store, queue_depth: Callable[[], int], queue_size: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "playledger_events_ingested", "Events committed to the store.", registry=r
        )
        self.duplicates = Counter(
            "playledger_events_duplicate",
            "Events received again and ignored (already stored).",
            registry=r,
        )
        self.rejected = Counter(
            "playledger_batches_rejected",
            "Ingest batches refused whole: invalid (400), too_large (413), conflict (409).",
            ["reason"],
            registry=r,
        )
        self.quarantined = Counter(
            "playledger_records_quarantined",
            "Records refused as malformed; the shipper that sent them quarantines them in its "
            "spool (kept, never dropped, reported by verify).",
            registry=r,
        )
        self.throttled = Counter(
            "playledger_ingest_throttled",
            "Ingest requests answered 503 + Retry-After (queue full or store busy).",
            registry=r,
        )
        self.dropped = Counter(
            "playledger_events_dropped",
            "Events accepted and then lost. No code path increments it: it is 0 by design.",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "playledger_commit_seconds",
            "Seconds per store commit of one ingest batch.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        depth = Gauge(
            "playledger_ingest_queue_depth",
            "Ingest batches in flight (being read, queued or committing).",
            registry=r,
        )
        depth.set_function(lambda: float(queue_depth()))
        Gauge(
            "playledger_ingest_queue_size",
            "Most ingest batches in flight (PLAYLEDGER_INGEST_QUEUE).",
            registry=r,
        ).set(queue_size)
        self._queue_depth = queue_depth
        r.register(_StoreCollector(store, queue_depth))
        self.dropped.inc(0)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def as_json(self) -> dict[str, Any]:
        """AWX's JSON shape: {name: {help_text, type, samples: [{labels, value}]}}, plus the
        `event_queue_size` key AWX users read."""
        out: dict[str, Any] = {}
        for family in self.registry.collect():
            out[family.name] = {
                "help_text": family.documentation,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
                ],
            }
        out["event_queue_size"] = {
            "help_text": "Ingest batches in flight (same as playledger_ingest_queue_depth).",
            "type": "gauge",
            "samples": [{"name": "event_queue_size", "labels": {}, "value": self._queue_depth()}],
        }
        return out
