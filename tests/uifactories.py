"""Synthetic runs shaped like real job output (plays, tasks, per-host results with the default
callback's text, a recap) for the UI tests; sealed, so verify sees a sound chain."""

from __future__ import annotations

import uuid as uuidlib

from playledger import render
from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, seal

DAY = "2026-12-04"


def _stamp(seconds: float) -> str:
    whole = int(seconds)
    return f"{DAY}T{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}.000000Z"


def job_run(
    tasks: int,
    hosts: int = 3,
    fail: frozenset[tuple[int, int]] = frozenset(),
    finished: bool = True,
    playbook: str = "site.yml",
    drop: frozenset[int] = frozenset(),
    in_summary: int | None = None,
) -> list[RunStart | Event | RunEnd]:
    """One play over `hosts` hosts and `tasks` tasks; `fail` holds (task, host) pairs that
    fail; `drop` removes those counters (a gap); `finished=False` leaves out the stats event
    and the final record; `in_summary` limits the recap to that many hosts."""
    run = str(uuidlib.uuid4())
    names = [f"web-{i:02d}" for i in range(hosts)]
    events: list[Event] = []
    clock = [0.0]

    def add(name: str, **fields: object) -> None:
        clock[0] += 0.5
        data = fields.pop("data", {})
        events.append(
            Event(
                run=run,
                counter=len(events) + 1,
                uuid=str(uuidlib.uuid4()),
                parent_uuid=None,
                created=_stamp(clock[0]),
                event=name,
                event_data=encode_data(data),
                **fields,  # type: ignore[arg-type]
            )
        )

    add("playbook_on_start", playbook=playbook)
    add(
        "playbook_on_play_start",
        play="deploy",
        play_uuid="p-1",
        stdout=render.banner("PLAY [deploy]"),
        data={"hosts_targeted": names},
    )
    for t in range(tasks):
        task, tid = f"step {t}", f"t-{t}"
        add(
            "playbook_on_task_start",
            play="deploy",
            task=task,
            task_uuid=tid,
            stdout=render.banner(f"TASK [{task}]"),
        )
        for h, host in enumerate(names):
            common = {"host": host, "play": "deploy", "task": task, "task_uuid": tid}
            add("runner_on_start", **common)
            if (t, h) in fail:
                res = {"msg": f"boom on {host}", "rc": 2}
                line = render.result_text("runner_on_failed", host, res, False)
                add("runner_on_failed", failed=True, stdout=line, data={"res": res}, **common)
            else:
                changed = (t + h) % 4 == 0
                res = {"changed": changed, "msg": f"did {task}"}
                line = render.result_text("runner_on_ok", host, res, False)
                add("runner_on_ok", changed=changed, stdout=line, data={"res": res}, **common)
    if finished:
        recap_hosts = names[: in_summary if in_summary is not None else hosts]
        summary = {
            h: {
                "ok": tasks - sum(1 for t, i in fail if names[i] == h),
                "changed": 1,
                "failures": sum(1 for t, i in fail if names[i] == h),
                "dark": 0,
                "skipped": 0,
                "rescued": 0,
                "ignored": 0,
            }
            for h in recap_hosts
        }
        add("playbook_on_stats", stdout=render.recap(summary), data={"summary": summary})
    prev = GENESIS_HASH
    for e in events:
        prev = seal(e, prev)
    start = RunStart(
        run=run,
        created=_stamp(0),
        playbook=playbook,
        argv=["ansible-playbook", "-i", "hosts.ini", playbook],
        cwd="/srv/ops",
        user="tester",
        controller="ctl-1",
        ansible_version="2.19.0",
        playledger_version="0",
        pid=1,
    )
    kept: list[RunStart | Event | RunEnd] = [start]
    kept += [e for e in events if e.counter not in drop]
    if finished:
        kept.append(RunEnd(run=run, created=_stamp(clock[0] + 1), emitted=len(events)))
    return kept
