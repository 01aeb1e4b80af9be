"""The server's write side: threads that own the store's writes, with group commit.

SQLite has exactly one writer thread (STYLE #5); PostgreSQL one per pooled connection. Ingest
batches that are waiting when a writer thread comes free are committed together in one
transaction (`Store.ingest_many`): one durable commit instead of one each, which is what lets a
single SQLite writer keep up with many controllers. Every batch still gets its own result and is
answered only after that commit; if the group fails, each batch is tried again on its own, so
one bad batch (a reused run id, say) fails only its own request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from playledger.events import Event, RunEnd, RunStart
from playledger.store.base import IngestResult, Store

log = logging.getLogger("playledger.api")
T = TypeVar("T")
Records = Sequence[RunStart | Event | RunEnd]

GROUP_RECORDS = 20_000  # at most this many records in one grouped transaction


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future[Any]


@dataclass
class _Ingest:
    records: Records
    future: Future[IngestResult]


_STOP = object()


class NotRunning(Exception):
    """The writer is not started, or stopping: nothing was submitted."""


class Writer:
    """`threads` is the store's writer pool size. `on_commit(seconds)` times each ingest
    commit; `on_ingest(result)` sees every committed batch, whether or not its client waits."""

    def __init__(
        self,
        store: Store,
        threads: int,
        on_commit: Callable[[float], None] | None = None,
        on_ingest: Callable[[IngestResult], None] | None = None,
    ) -> None:
        self.store = store
        self._threads = [
            threading.Thread(target=self._loop, name=f"playledger-writer-{i}", daemon=True)
            for i in range(threads)
        ]
        # Unbounded here, bounded by the ingest Gate: only admitted batches are submitted.
        self._jobs: queue.Queue[_Call | _Ingest | object] = queue.Queue()
        self._on_commit = on_commit
        self._on_ingest = on_ingest
        self._started = False

    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._started = True

    def stop(self) -> None:
        """Finish what was submitted, then end the threads."""
        if not self._started:
            return
        self._started = False
        for _ in self._threads:
            self._jobs.put(_STOP)
        for t in self._threads:
            t.join(timeout=60)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` (a store write) on a writer thread."""
        future: Future[T] = Future()
        self._put(_Call(fn, future))
        return future

    def submit_ingest(self, records: Records) -> Future[IngestResult]:
        """Commit `records` as one batch, possibly in one transaction with other batches."""
        future: Future[IngestResult] = Future()
        self._put(_Ingest(records, future))
        return future

    def _put(self, job: _Call | _Ingest) -> None:
        if not self._started:
            raise NotRunning("the server is starting or stopping")
        self._jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if isinstance(job, _Call):
                self._call(job)
            elif isinstance(job, _Ingest):
                group, held = self._group(job)
                self._ingest(group)
                if held is _STOP:
                    return
                if isinstance(held, _Call):
                    self._call(held)
            else:
                return  # _STOP

    def _group(self, first: _Ingest) -> tuple[list[_Ingest], object | None]:
        """`first` and the ingest jobs queued right behind it (up to GROUP_RECORDS records);
        the first other job taken from the queue is handed back to run next."""
        group, size = [first], len(first.records)
        while size < GROUP_RECORDS:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if not isinstance(job, _Ingest):
                return group, job
            group.append(job)
            size += len(job.records)
        return group, None

    def _call(self, job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # handed to the waiting request, which answers 5xx
            job.future.set_exception(exc)

    def _ingest(self, group: list[_Ingest]) -> None:
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self.store.ingest_many([j.records for j in live])
        except BaseException as exc:
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for job in live:  # the group failed: each batch on its own, with its own outcome
                self._ingest_alone(job)
            return
        self._committed(started)
        for job, result in zip(live, results, strict=True):
            self._done(job, result)

    def _ingest_alone(self, job: _Ingest) -> None:
        started = time.perf_counter()
        try:
            result = self.store.ingest(job.records)
        except BaseException as exc:
            job.future.set_exception(exc)
            return
        self._committed(started)
        self._done(job, result)

    def _committed(self, started: float) -> None:
        if self._on_commit is not None:
            self._on_commit(time.perf_counter() - started)

    def _done(self, job: _Ingest, result: IngestResult) -> None:
        job.future.set_result(result)
        if self._on_ingest is not None:
            try:
                self._on_ingest(result)  # counted here: the client may be gone
            except Exception:
                log.exception("counting a committed batch failed (the batch is stored)")
