"""Recorder logic without Ansible: one event per callback even when building details fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from playledger.callback.recorder import Recorder, RecorderConfig
from playledger.events import Event, record_decoder
from playledger.spool import SpoolFile


class FakeHost:
    def get_name(self) -> str:
        return "web-1"


class BrokenTask:
    _uuid = "task-1"
    action = "command"
    no_log = False
    delegate_to = None
    loop = None

    def get_name(self) -> str:
        return "broken"

    def get_path(self) -> str:
        raise RuntimeError("no path for you")


class FakeResult:
    host = FakeHost()
    task = BrokenTask()
    result: dict[str, Any] = {"changed": False}  # noqa: RUF012 - a fake


def _recorder(tmp_path: Path) -> Recorder:
    config = RecorderConfig(spool_dir=tmp_path, ship="off", run_id="run-1")
    return Recorder(config)


def _events(tmp_path: Path) -> list[Event]:
    chunk = SpoolFile(tmp_path, "run-1").read(0, final=True, max_records=100)
    records = [record_decoder.decode(p) for _, p in chunk.records]
    return [r for r in records if isinstance(r, Event)]


def test_a_failing_detail_still_records_one_event(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    with pytest.raises(RuntimeError, match="no path"):
        rec.result("runner_on_ok", FakeResult())
    rec.close()
    events = _events(tmp_path)
    assert [(e.counter, e.event, e.host) for e in events] == [(1, "runner_on_ok", "web-1")]
    data = msgspec.json.decode(events[0].event_data)
    assert data["playledger_error"] == "RuntimeError: no path for you"


def test_counters_stay_gapless_after_a_failure(tmp_path: Path) -> None:
    rec = _recorder(tmp_path)
    rec.simple("playbook_on_no_hosts_matched", {})
    with pytest.raises(RuntimeError):
        rec.result("runner_on_failed", FakeResult())
    rec.simple("playbook_on_no_hosts_remaining", {})
    rec.close()
    assert [e.counter for e in _events(tmp_path)] == [1, 2, 3]
