"""Drains spools into a store in batches; retries with backoff; never deletes what is not acked.

Runs as its own process (fork+exec from `playledger run` or from the callback), never as a
thread inside ansible-playbook. Order of operations per batch: read records after the acked
offset -> commit them in one store transaction -> durably advance the acked offset. A crash
anywhere in between only means the batch is shipped again, and the store ignores duplicates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from playledger.errors import BatchRejected, ResendNeeded, RunConflict, StoreError
from playledger.events import Record, RunStart, record_decoder
from playledger.sinks import Sink
from playledger.spool import HEADER, Bad, SpoolFile, list_runs, writer_alive
from playledger.store.base import IngestResult

log = logging.getLogger("playledger.shipper")

POLL_INTERVAL = 0.05
# While the run goes on and no full batch is waiting, ship at most this often: each round is a
# few fsyncs (spool, store commit, acked offset) that compete with ansible-playbook's own for
# the disk journal. The spool is the durable copy meanwhile; the store is at most this late.
LIVE_INTERVAL = 0.25
MAX_BACKOFF = 2.0


@dataclass
class ShipReport:
    run: str
    inserted: int = 0
    duplicates: int = 0
    quarantined: list[Bad] = field(default_factory=list)
    finished: bool = False  # the writer is gone and the spool was fully drained and removed
    left_records: int = 0  # still in the spool when the shipper gave up or the run goes on
    busy: bool = False  # another shipper holds this spool
    last_error: str | None = None
    conflict: str | None = None  # a reused run id: nothing more shipped, the spool kept


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits for its parent to reap it
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class _ShipLock:
    """One shipper per spool: an flock on <run>.lock, released when the process ends."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self._fd)


def _decode(spool: SpoolFile, payloads: list[tuple[int, bytes]]) -> tuple[list[Record], list[Bad]]:
    records: list[Record] = []
    bad: list[Bad] = []
    for end, payload in payloads:
        try:
            records.append(record_decoder.decode(payload))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            start = end - len(payload) - HEADER.size
            bad.append(Bad(start, end - start, f"undecodable record: {exc}"))
    return records, bad


def _spans(payloads: list[tuple[int, bytes]]) -> list[tuple[int, int]]:
    """(offset, length) of each payload that decodes, i.e. of each record `_decode` returned.

    Only needed when the sink refuses records, so the happy path never decodes twice."""
    spans = []
    for end, payload in payloads:
        try:
            record_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # already reported as undecodable by _decode
        spans.append((end - len(payload) - HEADER.size, len(payload) + HEADER.size))
    return spans


def _ingest(
    sink: Sink, spool: SpoolFile, payloads: list[tuple[int, bytes]], records: list[Record]
) -> tuple[IngestResult, list[Bad]]:
    """Ingest `records`; those the next hop refuses for good (BatchRejected: malformed) come
    back as byte ranges to quarantine, and the rest is sent again without them. One bad
    record must never block the spool, nor take its good neighbours with it."""
    spans: list[tuple[int, int]] | None = None  # of each record in `records`; on first refusal
    refused: list[Bad] = []
    while True:
        try:
            return sink.ingest(records), refused
        except BatchRejected as exc:
            if spans is None:
                spans = _spans(payloads)
            named = {i: r for i, r in exc.rejected.items() if 0 <= i < len(records)}
            if not named:  # the whole batch, or indexes we cannot place: all of it
                named = dict.fromkeys(range(len(records)), str(exc))
            log.error(
                "run %s: %d of %d record(s) refused as malformed, quarantined: %s",
                spool.run,
                len(named),
                len(records),
                exc,
            )
            for i, reason in named.items():
                refused.append(Bad(*spans[i], f"refused by the sink: {reason}"))
            records = [r for i, r in enumerate(records) if i not in named]
            spans = [s for i, s in enumerate(spans) if i not in named]
            if not records:
                return IngestResult(0, 0), refused


def _writer_exited(spool: SpoolFile, follow_pid: int) -> bool:
    """True when the followed process wrote this spool (its RunStart says so) and has exited.

    A child forked without Python's at-fork handlers (SpoolWriter drops the fd in those that
    run them) keeps the spool's fd and so its flock, maybe for minutes after the writer was
    killed; but only the process that wrote RunStart appends, so once it is gone the spool is
    final even while the lock is still held.
    """
    if pid_alive(follow_pid):
        return False
    first = spool.read(0, final=False, max_records=1, max_bytes=1 << 16)
    if not first.records:
        return False
    try:
        start = record_decoder.decode(first.records[0][1])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False  # cannot tell: trust the lock
    return isinstance(start, RunStart) and start.pid == follow_pid


def ship_spool(
    spool: SpoolFile,
    store: Sink,
    batch_size: int,
    timeout: float,
    follow_pid: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ShipReport:
    """Ship one run's spool. With `follow_pid`, keep following it while that process lives.

    Returns when the spool is fully shipped and its writer gone (the spool is then removed),
    when a non-following call has shipped all complete records, or when `timeout` seconds pass
    after the run ended with records still unshipped (they stay in the spool).
    """
    report = ShipReport(spool.run)
    spool.spool_dir.mkdir(parents=True, exist_ok=True)
    lock = _ShipLock(spool.lock_path)
    try:
        if not lock.try_acquire():
            report.busy = True
            report.left_records = spool.backlog()[0]
            return report
        _ship_locked(spool, store, batch_size, timeout, follow_pid, clock, sleep, report)
    finally:
        lock.close()
    return report


def _ship_locked(
    spool: SpoolFile,
    store: Sink,
    batch_size: int,
    timeout: float,
    follow_pid: int | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    report: ShipReport,
) -> None:
    offset = spool.acked()
    backoff = POLL_INTERVAL
    requarantined: set[int] = set()  # after a resend: bad ranges already quarantined
    deadline: float | None = None if follow_pid is not None else clock() + timeout
    while True:
        exists = spool.path.exists()
        writing = writer_alive(spool.path)
        if writing and follow_pid is not None and _writer_exited(spool, follow_pid):
            writing = False
        waiting_for_start = follow_pid is not None and not exists and pid_alive(follow_pid)
        run_over = not writing and not waiting_for_start
        if run_over and deadline is None:
            deadline = clock() + timeout

        chunk = spool.read(offset, final=run_over, max_records=batch_size)
        payloads = chunk.records
        records, undecodable = _decode(spool, payloads)
        bad = chunk.bad + undecodable
        committed = True
        if records:
            try:
                result, refused = _ingest(store, spool, payloads, records)
            except RunConflict as exc:
                # Not retryable and not droppable: keep the spool, say so, stop this run.
                report.conflict = str(exc)
                report.left_records = spool.backlog()[0]
                log.error("run %s: %s", spool.run, exc)
                return
            except StoreError as exc:
                committed = False
                report.last_error = str(exc)
                log.warning(
                    "run %s: store unavailable, retrying in %.2fs: %s", spool.run, backoff, exc
                )
            else:
                report.inserted += result.inserted
                report.duplicates += result.duplicates
                bad += refused  # quarantined below, like a corrupt record
                backoff = POLL_INTERVAL
        if committed and (records or bad):
            new_offset = chunk.end
            for b in sorted(bad, key=lambda b: b.offset):
                if b.offset in requarantined:
                    continue
                spool.quarantine(b)
                report.quarantined.append(b)
                log.error(
                    "run %s: %s in %s at offset %d (%d bytes) quarantined to %s",
                    spool.run,
                    b.reason,
                    spool.path,
                    b.offset,
                    b.length,
                    spool.quarantine_path,
                )
                if b.reason.startswith("torn tail") and b.offset + b.length == chunk.end:
                    spool.truncate_torn(b.offset)  # repair: the file ends on a frame boundary
                    new_offset = b.offset
            spool.set_acked(new_offset)
            offset = new_offset
            if run_over or len(payloads) >= batch_size:
                continue  # there may be more right behind
            sleep(LIVE_INTERVAL)  # a live run: let a few more events gather first
            continue

        if committed and run_over and offset >= spool.size():
            if exists:
                # A run whose final record never came (ansible-playbook killed) is marked
                # aborted; a no-op when the final record is stored.
                try:
                    store.mark_aborted(spool.run)
                except RunConflict as exc:
                    report.conflict = str(exc)
                    log.error("run %s: %s", spool.run, exc)
                    return
                except ResendNeeded as exc:
                    # A broker acknowledged records its store never got: ship it all again.
                    report.last_error = str(exc)
                    committed = False
                    requarantined = {
                        o for q in spool.quarantined() if isinstance(o := q.get("offset"), int)
                    }
                    spool.set_acked(0)
                    offset = 0
                except StoreError as exc:
                    report.last_error = str(exc)
                    committed = False
                    log.warning(
                        "run %s: shipped, not yet confirmed (the spool is kept), retrying in "
                        "%.2fs: %s",
                        spool.run,
                        backoff,
                        exc,
                    )
                else:
                    spool.remove()
            if committed:
                report.finished = True
                return

        if follow_pid is None and not run_over and committed:
            report.left_records = spool.backlog()[0]
            return  # a live writer: ship what is complete, leave the rest to its own shipper
        if deadline is not None and clock() >= deadline:
            report.left_records = spool.backlog()[0]
            return
        if committed:
            sleep(POLL_INTERVAL)
        else:
            sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def ship_all(spool_dir: Path, store: Sink, batch_size: int, timeout: float) -> list[ShipReport]:
    """`playledger ship`: drain every spool in the folder (finished runs are removed)."""
    reports = []
    for run in list_runs(spool_dir):
        spool = SpoolFile(spool_dir, run)
        if not spool.path.exists():
            continue
        reports.append(ship_spool(spool, store, batch_size, timeout))
    return reports
