"""Real ansible-playbook runs: one event per callback, linked, numbered, and shown as Ansible does.

Every run here is compared with the independent recorder (tests/plugins/independent_recorder.py)
that Ansible loads next to playledger in the same process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import Env
from playledger.events import Event

UNREACHABLE = (
    "[unreachable]\n"
    "far ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1 ansible_ssh_timeout=5"
)

MIXED = """
- name: main play
  hosts: all
  gather_facts: false
  handlers:
    - name: a handler
      debug: msg="handled on {{ inventory_hostname }}"
  tasks:
    - name: plain ok
      debug: msg="hello {{ inventory_hostname }}"
    - name: changed and notify
      command: echo changed
      notify: a handler
    - name: fail on b
      fail: msg="b fails"
      when: inventory_hostname == 'node-b'
      ignore_errors: true
    - name: skipped task
      debug: msg=never
      when: false
    - name: loop items
      command: "{{ 'false' if item == 'bad' else 'echo ' + item }}"
      loop: [one, skipme, bad]
      when: item != 'skipme'
      ignore_errors: true
    - name: debug loop
      debug: msg="item {{ item }}"
      loop: [x, y]
    - name: retry until
      command: /bin/false
      register: attempt
      until: attempt.rc == 0
      retries: 2
      delay: 0
      ignore_errors: true
    - name: include
      include_tasks: included.yml
    - name: block
      block:
        - name: in block fails
          fail: msg=boom
      rescue:
        - name: rescued
          debug: msg=rescued
      always:
        - name: always runs
          command: echo always
          changed_when: false

- name: nobody
  hosts: nomatch
  gather_facts: false
  tasks:
    - debug: msg=never

- name: serial play
  hosts: node-a,node-b
  serial: 1
  gather_facts: false
  tasks:
    - name: one host at a time
      debug: msg=serial

- name: free play
  hosts: node-a,node-b
  strategy: free
  gather_facts: false
  tasks:
    - name: free first
      debug: msg=free1
    - name: free second
      command: echo free2

- name: all fail
  hosts: node-a,node-b
  gather_facts: false
  max_fail_percentage: 0
  any_errors_fatal: true
  tasks:
    - name: everybody fails
      fail: msg=all
    - name: never reached
      debug: msg=never
"""

INCLUDED = """
- name: inside include
  debug: msg="included on {{ inventory_hostname }}"
"""

# The callbacks the mixed playbook must produce (each at least once).
MIXED_EVENTS = {
    "playbook_on_start",
    "playbook_on_play_start",
    "playbook_on_task_start",
    "playbook_on_handler_task_start",
    "playbook_on_notify",
    "playbook_on_include",
    "playbook_on_no_hosts_matched",
    "playbook_on_no_hosts_remaining",
    "playbook_on_stats",
    "runner_on_start",
    "runner_on_ok",
    "runner_on_failed",
    "runner_on_skipped",
    "runner_on_unreachable",
    "runner_item_on_ok",
    "runner_item_on_failed",
    "runner_item_on_skipped",
    "runner_retry",
}
TASK_STARTS = ("playbook_on_task_start", "playbook_on_handler_task_start")


# --- helpers shared by the tests/test_callback_*.py files ---------------------------------------


def new_env(root: Path) -> Env:
    """An isolated installation like conftest's `env`, for module-scoped fixtures."""
    work = root / "work"
    work.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYLEDGER_", "ANSIBLE_"))}
    return Env(
        work,
        {
            **keep,
            "PLAYLEDGER_DB": str(root / "store" / "playledger.db"),
            "PLAYLEDGER_SPOOL_DIR": str(root / "spool"),
            "PLAYLEDGER_SHIP_TIMEOUT": "60",
            "INDEPENDENT_RECORDER_FILE": str(root / "independent.jsonl"),
            "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "HOME": os.environ.get("HOME", str(root)),
        },
    )


def data(event: Event) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(bytes(event.event_data))
    return decoded


def stored_events(env: Env, run: str = "latest") -> list[Event]:
    store = env.store()
    try:
        return list(store.events(store.run(run).id))
    finally:
        store.close()


def assert_recorded_complete(proc: subprocess.CompletedProcess[str]) -> None:
    """`playledger run` printed its summary line and it says complete."""
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    assert "complete, chain ok" in lines[-1], (lines[-1], proc.stderr[-2000:])
    assert "INCOMPLETE" not in lines[-1]


def assert_gapless(env: Env, events: Sequence[Event]) -> None:
    """Counters 1..N without holes, N == emitted, the stats event last, verify exit 0."""
    assert [e.counter for e in events] == list(range(1, len(events) + 1))
    store = env.store()
    try:
        assert store.run("latest").emitted == len(events)
    finally:
        store.close()
    stats = [e for e in events if e.event == "playbook_on_stats"]
    assert len(stats) == 1 and stats[0] is events[-1]
    assert data(stats[0])["emitted"] == len(events)
    verify = env.playledger("verify", "latest")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def assert_matches_recorder(env: Env, events: Sequence[Event]) -> None:
    """Same multiset of (event, host) as the independent recorder, and the same task uuids."""
    recorded = env.recorded()
    assert recorded, "the independent recorder saw nothing"
    assert Counter((e.event, e.host) for e in events) == Counter(
        (r["event"], r["host"]) for r in recorded
    )
    # Async polls are left out: playledger links them to the task that started the job.
    theirs = Counter(
        (r["event"], r["host"], r["task_uuid"]) for r in recorded if r["event"] in _TASK_EVENTS
    )
    ours = Counter((e.event, e.host, e.task_uuid) for e in events if e.event in _TASK_EVENTS)
    assert ours == theirs


_TASK_EVENTS = frozenset(
    {
        "playbook_on_task_start",
        "playbook_on_handler_task_start",
        "runner_on_start",
        "runner_on_ok",
        "runner_on_failed",
        "runner_on_skipped",
        "runner_on_unreachable",
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_item_on_skipped",
        "runner_retry",
    }
)


def task_start(events: Sequence[Event], name: str) -> Event:
    starts = [e for e in events if e.event in TASK_STARTS and e.task == name]
    assert len(starts) == 1, [(e.counter, e.task) for e in starts]
    return starts[0]


def results(events: Sequence[Event], task: Event, name: str) -> list[Event]:
    return [e for e in events if e.event == name and e.task_uuid == task.task_uuid]


def hosts_of(events: Sequence[Event]) -> list[str]:
    return sorted(e.host or "" for e in events)


# --- one mixed run, read by several tests -------------------------------------------------------


@dataclass
class MixedRun:
    env: Env
    proc: subprocess.CompletedProcess[str]
    events: list[Event]
    started: datetime
    ended: datetime


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MixedRun]:
    env = new_env(tmp_path_factory.mktemp("mixed"))
    env.inventory(["node-a", "node-b"], extra=UNREACHABLE)
    env.write("site.yml", MIXED)
    env.write("included.yml", INCLUDED)
    env.vars.update(env.with_recorder())
    env.vars["ANSIBLE_TIMEOUT"] = "5"
    started = datetime.now(UTC)
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini", "-f", "5")
    ended = datetime.now(UTC)
    yield MixedRun(env, proc, stored_events(env), started, ended)


def test_every_callback_is_one_event_without_holes(mixed: MixedRun) -> None:
    assert mixed.proc.returncode in (2, 4), mixed.proc.stderr  # failures and an unreachable host
    assert_recorded_complete(mixed.proc)
    events = mixed.events
    assert_gapless(mixed.env, events)
    assert_matches_recorder(mixed.env, events)
    names = Counter(e.event for e in events)
    assert set(names) >= MIXED_EVENTS, MIXED_EVENTS - set(names)
    assert len({e.uuid for e in events}) == len(events)
    assert len({e.run for e in events}) == 1
    # The serial play runs once per batch: two play starts for it.
    plays = [e.play for e in events if e.event == "playbook_on_play_start"]
    assert plays.count("serial play") == 2
    assert names["runner_retry"] == 4  # 2 retries x 2 hosts
    assert Counter(e.host for e in events if e.event == "runner_item_on_skipped") == {
        "node-a": 1,
        "node-b": 1,
    }
    assert [e.host for e in events if e.event == "runner_on_unreachable"] == ["far"]
    # Each worker start has exactly one result for that host and task, whatever the strategy.
    starts = Counter((e.host, e.task_uuid) for e in events if e.event == "runner_on_start")
    finals = Counter(
        (e.host, e.task_uuid)
        for e in events
        if e.event
        in ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable")
    )
    assert starts == finals


def test_events_carry_outcome_flags(mixed: MixedRun) -> None:
    events = mixed.events
    ignored = results(events, task_start(events, "fail on b"), "runner_on_failed")
    assert [e.host for e in ignored] == ["node-b"]
    assert data(ignored[0])["ignore_errors"] is True
    assert not ignored[0].failed  # ignored failures do not count as failed
    fatal = results(events, task_start(events, "everybody fails"), "runner_on_failed")
    assert hosts_of(fatal) == ["node-a", "node-b"]
    assert all(e.failed for e in fatal)
    changed = results(events, task_start(events, "changed and notify"), "runner_on_ok")
    assert hosts_of(changed) == ["node-a", "node-b"]
    assert all(e.changed for e in changed)
    items = [
        data(e)["item"]
        for e in events
        if e.event.startswith("runner_item_on_") and e.task == "loop items"
    ]
    assert Counter(items) == {"one": 2, "skipme": 2, "bad": 2}
    retries = results(events, task_start(events, "retry until"), "runner_retry")
    assert sorted(data(e)["attempts"] for e in retries) == [1, 1, 2, 2]
    assert all(data(e)["retries"] == 3 for e in retries)  # Ansible counts the first try
    stats = data(events[-1])["summary"]
    assert stats["far"]["dark"] == 1
    assert stats["node-a"]["rescued"] == 1 and stats["node-b"]["rescued"] == 1


def test_parent_links_and_utc_times(mixed: MixedRun) -> None:
    events = mixed.events
    by_uuid = {e.uuid: e for e in events}
    playbook = events[0]
    assert playbook.event == "playbook_on_start" and playbook.parent_uuid is None
    current_play: Event | None = None
    checked = Counter[str]()
    for e in events:
        created = datetime.fromisoformat(e.created)
        assert e.created.endswith("Z") and created.utcoffset() is not None
        assert created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        assert mixed.started <= created <= mixed.ended
        if e.event == "playbook_on_start":
            continue
        parent = by_uuid.get(e.parent_uuid or "")
        assert parent is not None, f"{e.counter} {e.event}: parent {e.parent_uuid} not stored"
        assert parent.counter < e.counter
        if e.event == "playbook_on_play_start":
            assert parent is playbook
            current_play = e
        elif e.event in TASK_STARTS:
            assert parent is current_play
            assert e.play_uuid == current_play.play_uuid and e.task_uuid
        elif e.event.startswith("runner_") or e.event in ("playbook_on_include",):
            # result -> its task's start event (same task uuid) -> play -> playbook
            assert parent.event in TASK_STARTS, (e.counter, e.event, parent.event)
            assert parent.task_uuid == e.task_uuid
            assert by_uuid[parent.parent_uuid or ""] is current_play
            assert e.play_uuid == parent.play_uuid
        elif e.event == "playbook_on_notify":
            assert parent.event in TASK_STARTS and parent.task == "changed and notify"
            assert e.task_uuid == parent.task_uuid
        elif e.event in ("playbook_on_no_hosts_matched", "playbook_on_no_hosts_remaining"):
            assert parent is current_play
        elif e.event == "playbook_on_stats":
            assert parent is playbook
        else:
            raise AssertionError(f"unexpected event {e.event}")
        checked[e.event] += 1
    assert set(checked) == MIXED_EVENTS - {"playbook_on_start"}
    # Handler results link to the handler's own start event.
    handler = task_start(events, "a handler")
    assert handler.event == "playbook_on_handler_task_start"
    assert hosts_of(results(events, handler, "runner_on_ok")) == [
        "node-a",
        "node-b",
    ]


def test_serial_batches_link_to_their_own_task_start(mixed: MixedRun) -> None:
    events = mixed.events
    starts = [e for e in events if e.event in TASK_STARTS and e.task == "one host at a time"]
    assert len(starts) == 2  # one per batch
    oks = [e for e in events if e.event == "runner_on_ok" and e.task == "one host at a time"]
    assert [e.host for e in oks] == ["node-a", "node-b"]
    assert [e.parent_uuid for e in oks] == [s.uuid for s in starts]


def test_free_strategy_results_link_to_a_preceding_start(mixed: MixedRun) -> None:
    events = mixed.events
    for name in ("free first", "free second"):
        starts = {e.uuid: e for e in events if e.event in TASK_STARTS and e.task == name}
        assert starts
        done = [e for e in events if e.event == "runner_on_ok" and e.task == name]
        assert hosts_of(done) == ["node-a", "node-b"]
        for e in done:
            assert e.parent_uuid in starts and starts[e.parent_uuid].counter < e.counter


# --- job output, host summary, filters ----------------------------------------------------------

# Lines the default callback prints from callbacks; the rest of Ansible's stdout ([ERROR] and
# [WARNING] blocks) is Display output that no callback sees.
_KEY_LINE = re.compile(
    r"^(PLAY \[|PLAY RECAP|TASK \[|RUNNING HANDLER \[|ok: |changed: |fatal: |failed: |"
    r"skipping: |included: |\.\.\.ignoring|NO MORE HOSTS LEFT|FAILED - RETRYING|"
    r"\S+\s+: ok=)"
)


def _key_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if _KEY_LINE.match(line)]


def _is_subsequence(needle: Sequence[str], haystack: Sequence[str]) -> bool:
    it = iter(haystack)
    return all(any(line == h for h in it) for line in needle)


def test_show_prints_the_job_output_ansible_printed(mixed: MixedRun) -> None:
    proc = mixed.env.playledger("show", "latest")
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout
    for expected in (
        "PLAY [main play] ***",
        "TASK [plain ok] ***",
        "RUNNING HANDLER [a handler] ***",
        "ok: [node-a] => {",
        "changed: [node-b]",
        "fatal: [node-b]: FAILED! =>",
        "fatal: [far]: UNREACHABLE! =>",
        "skipping: [node-a]",
        "skipping: [node-b] => (item=skipme)",
        "failed: [node-a] (item=bad) =>",
        "FAILED - RETRYING: [node-a]: retry until (2 retries left).",
        "included: ",
        "skipping: no hosts matched",
        "NO MORE HOSTS LEFT ***",
        "PLAY RECAP ***",
    ):
        assert expected in shown, expected
    ansible_out = mixed.proc.stdout.splitlines()[:-1]  # minus playledger's own summary line
    # What the default callback printed from callbacks, we show, in the same order and
    # byte for byte (async/display-only lines aside).
    assert _key_lines(shown) == _key_lines("\n".join(ansible_out))
    shown_lines = [line.rstrip() for line in shown.splitlines()]
    assert _is_subsequence(shown_lines, [line.rstrip() for line in ansible_out])


def test_colour_is_applied_only_on_request(mixed: MixedRun) -> None:
    plain = mixed.env.playledger("show", "latest", "--no-color")
    coloured = mixed.env.playledger("show", "latest", "--color")
    assert "\x1b[" not in plain.stdout
    assert plain.stdout == mixed.env.playledger("show", "latest").stdout  # not a terminal
    lines = coloured.stdout.splitlines()
    # The default callback's colours: red failures, cyan "...ignoring", yellow changes.
    assert (
        '\x1b[31mfatal: [node-b]: FAILED! => {"changed": false, "msg": "b fails"}\x1b[0m' in lines
    )
    assert "\x1b[36m...ignoring\x1b[0m" in lines
    assert "\x1b[33mchanged: [node-a]\x1b[0m" in lines
    assert "\x1b[36mskipping: [node-a]\x1b[0m" in lines
    banners = [line for line in lines if re.sub(r"\x1b\[[0-9;]*m", "", line).endswith("***")]
    assert any("[free first]" in line for line in banners)  # printed with a result
    assert banners and all("\x1b" not in line for line in banners)
    # Without colour codes the coloured output is the plain one.
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.stdout) == plain.stdout


def _recap(text: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+: (ok=.*)$", line)
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return recap


def test_hosts_prints_the_summary_ansible_printed(mixed: MixedRun) -> None:
    ansible_recap = _recap(mixed.proc.stdout)
    assert set(ansible_recap) == {"far", "node-a", "node-b"}
    proc = mixed.env.playledger("hosts", "latest")
    assert proc.returncode == 0, proc.stderr
    rows = {
        cols[0]: [int(c) for c in cols[1:]]
        for cols in (line.split() for line in proc.stdout.splitlines())
        if cols and cols[0] in ansible_recap
    }
    order = ("ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored")
    assert rows == {h: [r[k] for k in order] for h, r in ansible_recap.items()}
    as_json = mixed.env.playledger("hosts", "latest", "--json")
    summaries = {s["host"]: s for s in map(json.loads, as_json.stdout.splitlines())}
    assert summaries["far"]["dark"] == 1 == ansible_recap["far"]["unreachable"]
    assert summaries["node-b"]["ignored"] == ansible_recap["node-b"]["ignored"] > 0


def test_events_filters_by_host_and_event(mixed: MixedRun) -> None:
    expected = [
        e.counter for e in mixed.events if e.host == "node-b" and e.event == "runner_on_failed"
    ]
    assert len(expected) >= 3
    proc = mixed.env.playledger(
        "events", "latest", "--host", "node-b", "--event", "runner_on_failed"
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert [int(r[0]) for r in rows] == expected
    assert all(r[1] == "runner_on_failed" and r[2] == "node-b" for r in rows)
    as_json = mixed.env.playledger(
        "events", "latest", "--host", "node-b", "--event", "runner_on_failed", "--json"
    )
    decoded = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [d["counter"] for d in decoded] == expected
    assert {(d["host"], d["event"]) for d in decoded} == {("node-b", "runner_on_failed")}
    none = mixed.env.playledger("events", "latest", "--host", "far", "--event", "runner_on_failed")
    assert none.returncode == 0 and none.stdout.splitlines()[1:] == []


# --- async -------------------------------------------------------------------------------------

ASYNC = """
- hosts: all
  gather_facts: false
  tasks:
    - name: polled job
      command: sleep 3
      async: 30
      poll: 1
    - name: launch checked job
      command: sleep 1
      async: 60
      poll: 0
      register: launched
    - name: check the job
      async_status:
        jid: "{{ launched.ansible_job_id }}"
      register: job
      until: job.finished
      retries: 30
      delay: 1
    - name: launch forgotten job
      command: sleep 1
      async: 60
      poll: 0
    - name: skipped polled job
      command: sleep 1
      async: 60
      poll: 1
      when: false
    - name: skipped launch
      command: sleep 1
      async: 60
      poll: 0
      when: false
"""


def test_async_events_link_to_the_task_that_started_them(env: Env, tmp_path: Path) -> None:
    env.inventory(["node-a", "node-b"])
    env.write("site.yml", ASYNC)
    env.vars.update(env.with_recorder())
    env.vars["ANSIBLE_ASYNC_DIR"] = str(tmp_path / "async")
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    events = stored_events(env)
    assert_gapless(env, events)
    assert_matches_recorder(env, events)

    # poll > 0: polls and the outcome belong to the original task, under its start event.
    polled = task_start(events, "polled job")
    started = results(events, polled, "runner_on_start")
    assert [data(e)["async"] for e in started] == [{"async_val": 30, "poll": 1}] * 2
    for host in ("node-a", "node-b"):
        polls = [e for e in results(events, polled, "runner_on_async_poll") if e.host == host]
        done = [e for e in results(events, polled, "runner_on_async_ok") if e.host == host]
        assert polls and len(done) == 1, [(e.event, e.host, e.task) for e in events]
        for e in [*polls, *done]:
            assert e.parent_uuid == polled.uuid and e.task == "polled job"
            assert data(e)["async_status_task_uuid"]
        assert data(done[0])["res"]["finished"] == 1
        # Ansible reports each poll under an implicit async_status task; that uuid is kept.
        seen = [
            r["task_uuid"]
            for r in env.recorded()
            if r["event"] == "runner_on_async_poll" and r["host"] == host
        ]
        assert [data(e)["async_status_task_uuid"] for e in polls] == seen
        assert polled.task_uuid not in seen

    # poll: 0: the launch says so; the later async_status result points back at the launch.
    launch = task_start(events, "launch checked job")
    check = task_start(events, "check the job")
    for host in ("node-a", "node-b"):
        (launched,) = [e for e in results(events, launch, "runner_on_ok") if e.host == host]
        job = data(launched)["async_job"]
        assert job["launched"] is True and job["jid"]
        (checked,) = [e for e in results(events, check, "runner_on_ok") if e.host == host]
        back = data(checked)["async_job"]
        assert back["jid"] == job["jid"] and back["finished"] is True
        assert back["launched_by_task_uuid"] == launch.task_uuid
        assert back["launched_by_event"] == launched.uuid
        assert checked.parent_uuid == check.uuid  # still a result of its own task

    # The job nobody checked is reported, the checked one is not.
    verify = env.playledger("verify", "latest", "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["async_launched"] == 4
    forgotten = task_start(events, "launch forgotten job")
    jids = {e.host: data(e)["async_job"]["jid"] for e in results(events, forgotten, "runner_on_ok")}
    assert sorted((j["host"], j["jid"], j["task"]) for j in report["async_unfinished"]) == sorted(
        (h, jid, "launch forgotten job") for h, jid in jids.items()
    )
    text = env.playledger("verify", "latest")
    assert "2 never seen finishing" in text.stdout


# --- many hosts --------------------------------------------------------------------------------

WIDE = """
- name: wide
  hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: remember
      set_fact:
        seen: "{{ inventory_hostname }}"
    - name: skip most
      debug: msg=odd
      when: inventory_hostname is search('[13579]$')
"""


@pytest.mark.slow
def test_220_hosts_end_complete(env: Env) -> None:
    hosts = [f"host-{i:03d}" for i in range(220)]
    env.inventory(hosts)
    env.write("site.yml", WIDE)
    env.vars.update(env.with_recorder())
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini", "-f", "50", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_recorded_complete(proc)
    assert "220 hosts" in proc.stdout.splitlines()[-1]
    events = stored_events(env)
    assert_gapless(env, events)
    assert_matches_recorder(env, events)
    # 1 playbook + 1 play + 3 tasks + 220 x 3 x (start + result) + stats
    assert len(events) == 1 + 1 + 3 + 220 * 3 * 2 + 1
    verify = env.playledger("verify", "latest", "--json")
    assert verify.returncode == 0, verify.stdout
    report = json.loads(verify.stdout)
    assert report["complete"] is True
    assert report["stored"] == report["emitted"] == len(events)
    assert report["missing"] == [] and report["duplicates"] == 0 and report["chain_ok"]
    assert report["hosts_targeted"] == report["hosts_in_summary"] == 220
    assert report["hosts_with_events"] == 220 and report["hosts_not_in_summary"] == []
    summary = data(events[-1])["summary"]
    assert sorted(summary) == hosts
    assert all(s["ok"] >= 2 and s["failures"] == 0 for s in summary.values())
    assert sum(s["skipped"] for s in summary.values()) == 110


# --- roles, includes in loops, delegation, diffs, async loops, at -v ---------------------------

EXTRAS = """
- name: extras
  hosts: all
  gather_facts: false
  roles:
    - web
  tasks:
    - name: delegated
      command: echo delegated
      delegate_to: node-b
    - name: run once
      debug: msg=once
      run_once: true
    - name: include loop
      include_tasks: inc.yml
      loop: [one, two]
    - name: include role
      include_role:
        name: web
    - name: var debug
      debug: var=inventory_hostname
    - name: copy with diff
      copy:
        content: "hello {{ inventory_hostname }}\\n"
        dest: "{{ playbook_dir }}/out-{{ inventory_hostname }}.txt"
    - name: polled loop
      command: sleep 2
      async: 20
      poll: 1
      loop: [1, 2]
    - meta: flush_handlers
    - name: notify by listen
      command: echo x
      notify: web changed
    - name: end for b
      meta: end_host
      when: inventory_hostname == 'node-b'
    - name: after end
      debug: msg=after
"""
ROLE_TASKS = """
- name: role task
  command: echo role
  notify: restart web
- name: role debug
  debug: msg="in role ✓ héllo"
"""
ROLE_HANDLERS = """
- name: restart web
  debug: msg=restarting
  listen: web changed
"""
INC = """
- name: included with {{ item }}
  debug: msg="inc {{ item }}"
"""
# Display output of ansible-playbook that no callback sees.
_DISPLAY_ONLY = re.compile(
    r"^(No config file found|Using .* as config file|\[WARNING\]: |\[DEPRECATION WARNING\]: )"
)


def test_show_is_ansible_output_for_roles_includes_diffs_at_v(env: Env) -> None:
    env.inventory(["node-a", "node-b"])
    env.write("site.yml", EXTRAS)
    env.write("roles/web/tasks/main.yml", ROLE_TASKS)
    env.write("roles/web/handlers/main.yml", ROLE_HANDLERS)
    env.write("inc.yml", INC)
    env.vars.update(env.with_recorder())
    env.vars["ANSIBLE_ASYNC_DIR"] = str(env.root.parent / "async")
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini", "--diff", "-v")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_recorded_complete(proc)
    events = stored_events(env)
    assert_gapless(env, events)
    assert_matches_recorder(env, events)

    ansible_out = [
        line.rstrip() for line in proc.stdout.splitlines()[:-1] if not _DISPLAY_ONLY.match(line)
    ]
    shown = env.playledger("show", "latest").stdout
    assert [line.rstrip() for line in shown.splitlines()] == ansible_out
    for expected in (
        "TASK [web : role task] ***",
        "changed: [node-a -> node-b] => {",
        "included: ",
        "inc.yml for node-a, node-b => (item=two)",
        '    "msg": "in role ✓ héllo"',
        "+++ after: ",
        "RUNNING HANDLER [web : restart web] ***",
    ):
        assert expected in shown, expected

    by_uuid = {e.uuid: e for e in events}
    orphans = [(e.counter, e.event, e.task) for e in events[1:] if e.parent_uuid not in by_uuid]
    assert orphans == []
    # Every poll of every item belongs to the looped task.
    looped = task_start(events, "polled loop")
    polls = [e for e in events if e.event.startswith("runner_on_async_")]
    assert len([e for e in polls if e.event == "runner_on_async_ok"]) == 4
    assert {(e.task_uuid, e.parent_uuid) for e in polls} == {(looped.task_uuid, looped.uuid)}
    # Notifications link to the task that notified, even when sent at the flush.
    notes = [e for e in events if e.event == "playbook_on_notify"]
    assert {e.task for e in notes} == {"web : role task", "notify by listen"}
    for e in notes:
        assert by_uuid[e.parent_uuid or ""].task_uuid == e.task_uuid
