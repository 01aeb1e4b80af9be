"""Completeness, gaps, host coverage, async jobs and the hash chain of one stored run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from playledger.events import GENESIS_HASH, event_hash
from playledger.spool import SpoolFile
from playledger.store.base import RunRow, Store


@dataclass
class VerifyReport:
    run_id: int
    run: str
    playbook: str
    status: str
    emitted: int | None
    stored: int
    finished: bool  # the final record (emitted count) is stored
    missing: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    missing_count: int = 0
    duplicates: int = 0
    hosts_targeted: int | None = None
    hosts_in_summary: int | None = None
    hosts_with_events: int = 0
    hosts_not_in_summary: list[str] = field(default_factory=list)
    async_unfinished: list[dict[str, str]] = field(default_factory=list)
    async_launched: int = 0
    chain_ok: bool = True
    chain_checked: int = 0
    chain_errors: list[str] = field(default_factory=list)
    append_errors: int = 0  # the callback could not append these: lost before the spool
    spool_pending: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (
            self.finished
            and self.emitted == self.stored
            and not self.missing
            and not self.duplicates
            and self.chain_ok
            and not self.quarantined
            and not self.append_errors
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["complete"] = self.complete
        data["missing"] = [list(r) for r in self.missing]
        return data


def _ranges(missing: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for n in missing:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    return ranges


def verify_run(store: Store, run: RunRow, spool_dir: Path | None = None) -> VerifyReport:
    report = VerifyReport(
        run_id=run.id,
        run=run.uuid,
        playbook=run.playbook,
        status=run.status,
        emitted=run.emitted,
        stored=run.stored,
        finished=run.emitted is not None,
        append_errors=run.append_errors,
    )
    targeted: set[str] | None = None
    with_events: set[str] = set()
    launched: dict[tuple[str, str], dict[str, str]] = {}
    async_started: dict[tuple[str, str], dict[str, str]] = {}
    missing: list[int] = []
    expected = 1
    prev_hash: str | None = GENESIS_HASH
    for event in store.events(run.id):
        # Gaps: every counter from 1 to the last must be there.
        if event.counter > expected:
            missing.extend(range(expected, event.counter))
            prev_hash = None  # the link across a gap cannot be checked
        expected = event.counter + 1
        # Chain: the stored hash must recompute, and link to the stored predecessor.
        report.chain_checked += 1
        if event_hash(event) != event.hash:
            report.chain_errors.append(f"counter {event.counter}: hash does not match content")
        if prev_hash is not None and event.prev_hash != prev_hash:
            report.chain_errors.append(f"counter {event.counter}: prev_hash does not link")
        prev_hash = event.hash
        if event.host:
            with_events.add(event.host)
        raw = bytes(event.event_data)
        if event.event == "playbook_on_play_start":
            hosts = msgspec.json.decode(raw).get("hosts_targeted")
            if hosts is not None:
                targeted = (targeted or set()) | set(hosts)
        elif b'"async' in raw and event.host:
            data = msgspec.json.decode(raw)
            job = data.get("async_job")
            if job and job.get("launched"):
                report.async_launched += 1
                launched[(event.host, job["jid"])] = {
                    "host": event.host,
                    "jid": job["jid"],
                    "task": event.task or "",
                }
            elif job and job.get("finished"):
                launched.pop((event.host, job["jid"]), None)
            # str(): runs recorded before the fix hold "0"/"1" strings, not ints.
            poll = (data.get("async") or {}).get("poll")
            if event.event == "runner_on_start" and str(poll or 0) != "0":
                async_started[(event.host, event.task_uuid or "")] = {
                    "host": event.host,
                    "task": event.task or "",
                    "jid": "",
                }
        if event.event in (
            "runner_on_async_ok",
            "runner_on_async_failed",
            "runner_on_ok",
            "runner_on_failed",
            "runner_on_skipped",
            "runner_on_unreachable",
        ):
            async_started.pop((event.host or "", event.task_uuid or ""), None)
    last = run.emitted if run.emitted is not None else expected - 1
    if last >= expected:
        missing.extend(range(expected, last + 1))
    report.missing = _ranges(missing)
    report.missing_count = len(missing)
    report.duplicates = store.duplicate_uuids(run.id)
    report.chain_ok = not report.chain_errors and not missing
    report.chain_errors = report.chain_errors[:20]
    report.async_unfinished = list(launched.values()) + list(async_started.values())

    summaries = store.host_summaries(run.id)
    report.hosts_targeted = len(targeted) if targeted is not None else None
    report.hosts_with_events = len(with_events)
    if summaries is not None:
        in_summary = {s.host for s in summaries}
        report.hosts_in_summary = len(in_summary)
        report.hosts_not_in_summary = sorted((targeted or set()) - in_summary)[:50]

    if spool_dir is not None:
        spool = SpoolFile(spool_dir, run.uuid)
        report.spool_pending = spool.backlog()[0]
        report.quarantined = spool.quarantined()
    return report
