"""How long `verify` takes on one big run: the time the web UI's verify fragment costs.

Builds (once) a SQLite store holding one sealed, job-shaped run of --events events (a play,
tasks over --hosts hosts with the default callback's text, a recap), then times
`playledger verify latest` as a real child process, --repeat times, and prints the median,
then `verify_run` once in process (what the UI's verify fragment route runs).

    .venv/bin/python bench/bench_verify.py --events 1000000 --db /tmp/verify-1m.db
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

from playledger import render
from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, seal
from playledger.store import Store
from playledger.store.sqlite import SQLiteStore
from playledger.verify import verify_run

BATCH = 1000  # events per ingest transaction, as the shipper's default batch


def job_events(run: str, total: int, hosts: int) -> Iterator[Event]:
    """`total` sealed events: play start, then per task a task start and a start + ok per
    host, then the recap (the last task is cut short to land on `total` exactly)."""
    names = [f"node-{i:04d}" for i in range(hosts)]
    prev = GENESIS_HASH
    counter = 0

    def event(name: str, **fields: object) -> Event:
        nonlocal counter, prev
        counter += 1
        data = fields.pop("data", {})
        e = Event(
            run=run,
            counter=counter,
            uuid=str(uuidlib.uuid4()),
            parent_uuid=None,
            created=f"2026-12-04T10:{counter // 60000 % 60:02d}:{counter // 1000 % 60:02d}.000000Z",
            event=name,
            event_data=encode_data(data),
            **fields,  # type: ignore[arg-type]
        )
        prev = seal(e, prev)
        return e

    yield event("playbook_on_play_start", play="bench", data={"hosts_targeted": names})
    task = 0
    while counter < total - 1:
        title = f"step {task}"
        yield event(
            "playbook_on_task_start",
            task=title,
            task_uuid=f"t-{task}",
            stdout=render.banner(f"TASK [{title}]"),
        )
        for host in names:
            if counter >= total - 2:
                break
            common = {"host": host, "task": title, "task_uuid": f"t-{task}"}
            yield event("runner_on_start", **common)
            res = {"changed": False, "msg": f"did {title} on {host}"}
            line = render.result_text("runner_on_ok", host, res, False)
            yield event("runner_on_ok", stdout=line, data={"res": res}, **common)
        task += 1
    summary = {
        h: {
            "ok": task,
            "changed": 0,
            "failures": 0,
            "dark": 0,
            "skipped": 0,
            "rescued": 0,
            "ignored": 0,
        }
        for h in names
    }
    yield event("playbook_on_stats", stdout=render.recap(summary), data={"summary": summary})


def build(store: Store, total: int, hosts: int, batch_size: int = BATCH) -> str:
    """One run of `total` job-shaped events ingested into `store`; returns its uuid."""
    run = str(uuidlib.uuid4())
    start = RunStart(
        run=run,
        created="2026-12-04T10:00:00.000000Z",
        playbook="bench.yml",
        argv=["ansible-playbook", "bench.yml"],
        cwd="/",
        user="bench",
        controller="bench",
        ansible_version="2.19.0",
        playledger_version="0",
        pid=1,
    )
    store.ingest([start])
    batch: list[Event] = []
    emitted = 0
    for e in job_events(run, total, hosts):
        batch.append(e)
        emitted = e.counter
        if len(batch) == batch_size:
            store.ingest(batch)
            batch = []
    store.ingest([*batch, RunEnd(run=run, created="2026-12-04T11:00:00.000000Z", emitted=emitted)])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--db", default="/tmp/playledger-verify-bench.db")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.db).exists():
        t0 = time.perf_counter()
        store = SQLiteStore(args.db)
        try:
            build(store, args.events, args.hosts)
        finally:
            store.close()
        print(f"built {args.events:,} events in {time.perf_counter() - t0:.1f}s: {args.db}")
    spool = tempfile.mkdtemp(prefix="verify-bench-spool-")  # empty: nothing pending
    env = {**os.environ, "PLAYLEDGER_DB": args.db, "PLAYLEDGER_SPOOL_DIR": spool}
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "playledger", "verify", "latest"],
            env=env,
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:
            sys.exit(f"verify failed ({done.returncode}): {done.stdout}{done.stderr}")
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(
        f"playledger verify latest: median {statistics.median(times):.2f}s of "
        f"{[round(t, 2) for t in times]} ({last})"
    )
    store = SQLiteStore(args.db)  # the same work in process, as the UI's fragment route does it
    try:
        t0 = time.perf_counter()
        report = verify_run(store, store.run("latest"))
        in_process = time.perf_counter() - t0
    finally:
        store.close()
    print(
        f"verify_run in process: {in_process:.2f}s ({report.chain_checked:,} events checked, "
        f"complete={report.complete})"
    )


if __name__ == "__main__":
    main()
