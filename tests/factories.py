"""Synthetic, correctly sealed runs for store and verify tests (no Ansible involved)."""

from __future__ import annotations

import uuid as uuidlib

from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, seal

DAY = "2026-12-04"


def run_start(run: str, playbook: str = "site.yml", day: str = DAY) -> RunStart:
    return RunStart(
        run=run,
        created=f"{day}T00:00:00.000000Z",
        playbook=playbook,
        argv=["ansible-playbook", playbook],
        cwd="/tmp",
        user="tester",
        controller="ctl",
        ansible_version="2.19.0",
        playledger_version="0",
        pid=1,
    )


def make_events(run: str, n: int, hosts: int = 3, day: str = DAY) -> list[Event]:
    """n sealed events: a play start, then results spread over `hosts`, then stats."""
    events: list[Event] = []
    prev = GENESIS_HASH
    names = [f"host-{i}" for i in range(hosts)]
    for counter in range(1, n + 1):
        data: dict[str, object]
        if counter == 1:
            name, host, data = "playbook_on_play_start", None, {"hosts_targeted": names}
        elif counter == n:
            summary = {h: {"ok": 1, "changed": 0, "failures": 0, "dark": 0, "skipped": 0,
                           "rescued": 0, "ignored": 0} for h in names}  # fmt: skip
            name, host, data = "playbook_on_stats", None, {"summary": summary}
        else:
            host = names[counter % hosts]
            name = "runner_on_failed" if counter % 7 == 0 else "runner_on_ok"
            data = {"host": host, "res": {"msg": "x" * 50, "counter": counter}}
        e = Event(
            run=run,
            counter=counter,
            uuid=str(uuidlib.uuid4()),
            parent_uuid=None,
            created=f"{day}T00:00:01.000000Z",
            event=name,
            host=host,
            task=f"task {counter % 5}",
            task_uuid=f"t-{counter % 5}",
            changed=counter % 3 == 0,
            failed=name == "runner_on_failed",
            stdout=f"ok: [{host}]" if host else "",
            event_data=encode_data(data),
        )
        prev = seal(e, prev)
        events.append(e)
    return events


def make_run(
    n: int, run: str | None = None, hosts: int = 3, day: str = DAY
) -> list[RunStart | Event | RunEnd]:
    """A sealed run of n events; `day` (YYYY-MM-DD, UTC) dates every record of it."""
    run = run or str(uuidlib.uuid4())
    end = RunEnd(run=run, created=f"{day}T00:00:02.000000Z", emitted=n)
    return [run_start(run, day=day), *make_events(run, n, hosts, day), end]
