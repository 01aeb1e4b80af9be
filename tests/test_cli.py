"""CLI output formats over a store filled with synthetic runs (in-process, no Ansible)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from factories import make_run
from playledger.cli import cli
from playledger.store.sqlite import SQLiteStore


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path)
    store.ingest(make_run(25, hosts=2))
    store.ingest(make_run(60, hosts=4)[:-2])  # a second run: no stats, no final record yet
    store.close()
    return path


def invoke(db: str, *args: str, tmp: Path | None = None) -> tuple[int, str]:
    env = {"PLAYLEDGER_DB": db}
    if tmp is not None:
        env["PLAYLEDGER_SPOOL_DIR"] = str(tmp / "spool")
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


def test_runs_table_and_json(db: str) -> None:
    code, out = invoke(db, "runs")
    assert code == 0
    assert "25/25" in out and "59/?" in out
    code, out = invoke(db, "runs", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [2, 1]
    assert rows[1]["emitted"] == 25 and rows[0]["emitted"] is None


def test_export_jsonl_has_every_field(db: str) -> None:
    code, out = invoke(db, "export", "1", "--format", "jsonl")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["counter"] for e in events] == list(range(1, 26))
    for field in ("run", "uuid", "parent_uuid", "created", "event", "host", "task_uuid",
                  "changed", "failed", "stdout", "event_data", "prev_hash", "hash"):  # fmt: skip
        assert field in events[0]
    assert isinstance(events[1]["event_data"], dict)


def test_export_csv(db: str, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    code, _ = invoke(db, "export", "1", "--format", "csv", "-o", str(target))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 25 and json.loads(rows[1]["event_data"])["host"]


def test_events_filters_and_limit(db: str) -> None:
    code, out = invoke(db, "events", "1", "--event", "runner_on_failed", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events and all(e["event"] == "runner_on_failed" for e in events)
    code, out = invoke(db, "events", "2", "--host", "host-3", "--limit", "2", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(events) == 2 and {e["host"] for e in events} == {"host-3"}
    code, out = invoke(db, "events", "2", "--grep", "OK: [HOST-3]", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(events) == 15 and {e["stdout"] for e in events} == {"ok: [host-3]"}


def test_verify_exit_codes(db: str, tmp_path: Path) -> None:
    code, out = invoke(db, "verify", "1", tmp=tmp_path)
    assert code == 0 and "complete, chain ok" in out
    code, out = invoke(db, "verify", "2", "--json", tmp=tmp_path)
    report = json.loads(out)
    assert code == 1 and report["complete"] is False and report["finished"] is False
    code, out = invoke(db, "verify", "latest", tmp=tmp_path)
    assert code == 1 and "no final record" in out


def test_hosts_without_stats_is_a_clear_error(db: str) -> None:
    code, out = invoke(db, "hosts", "2")
    assert code == 1 and "no stored host summary" in out
    code, out = invoke(db, "hosts", "1", "--json")
    assert code == 0 and len(out.splitlines()) == 2


def test_show_prints_stdout_in_order(db: str) -> None:
    code, out = invoke(db, "show", "1", "--no-color")
    assert code == 0
    assert "ok: [host-1]" in out.splitlines()
    assert "\x1b[" not in out
    code, colored = invoke(db, "show", "1", "--color")
    assert "\x1b[32m" in colored  # ok lines in green, as the default callback


def test_spool_status_empty(db: str, tmp_path: Path) -> None:
    code, out = invoke(db, "spool", "status", tmp=tmp_path)
    assert code == 0 and "empty" in out


def test_callback_path_points_at_the_plugin() -> None:
    result = CliRunner().invoke(cli, ["callback-path"])
    assert (Path(result.output.strip()) / "playledger.py").is_file()
