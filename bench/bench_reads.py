"""Read latency on big stores: what the API, the UI and the CLI ask of a store, timed.

Builds (in a fresh SQLite file and a fresh PostgreSQL schema) --runs job-shaped runs of --events
events each (bench_verify.job_events: a play, tasks over --hosts hosts, a recap), then times the
read calls on the last run: counting, the first and a deep page of 200 events (keyset), pages
filtered by host / event / failed, the next output match, host summaries and totals, and AWX
`start_line` for a deep page (cold, then from the cached blocks). Each is the median of
--repeat calls after one warm-up call; the store is the real one (`open_store`). PostgreSQL's
events are vacuumed and analyzed after the load, as autovacuum does in the steady state.

    .venv/bin/python bench/bench_reads.py                          # 1 run of 1,000,000 events
    .venv/bin/python bench/bench_reads.py --runs 10                # 10,000,000 events stored
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_verify
import psycopg
from bench_http import pg_schema

from playledger.store import EventFilter, Store, open_store

BATCH = 10_000


def build(store: Store, runs: int, events: int, hosts: int) -> str:
    """`runs` runs of `events` events each; returns the last run's uuid."""
    run = ""
    for _ in range(runs):
        run = bench_verify.build(store, events, hosts, BATCH)
    return run


def timed(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up: the page cache, the reader connection, the prepared statement
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def measure(store: Store, run_uuid: str, events: int, repeat: int) -> list[tuple[str, float]]:
    run = store.run(run_uuid)
    rid = run.id
    half = events // 2
    host = "node-0042"
    last_task = store.event_page(rid, EventFilter(event="playbook_on_task_start"), half, 1)[0]
    needle = f"did {last_task.task} on node-0007"
    rows: list[tuple[str, float]] = [
        ("run lookup by id", timed(lambda: store.run(str(rid)), repeat)),
        ("count a run's events", timed(lambda: store.count_events(rid), repeat)),
        (
            "count one host's events",
            timed(lambda: store.count_events(rid, EventFilter(host=host)), repeat),
        ),
        (
            "count runner_on_ok events",
            timed(lambda: store.count_events(rid, EventFilter(event="runner_on_ok")), repeat),
        ),
        ("first page of 200 events", timed(lambda: store.event_page(rid, None, 0, 200), repeat)),
        (
            f"page of 200 after counter {half:,} (keyset)",
            timed(lambda: store.event_page(rid, None, half, 200), repeat),
        ),
        (
            "page of 200 of one host, from the middle",
            timed(lambda: store.event_page(rid, EventFilter(host=host), half, 200), repeat),
        ),
        (
            "page of 200 failed events (none)",
            timed(lambda: store.event_page(rid, EventFilter(failed=True), 0, 200), repeat),
        ),
        (
            "next output match from the start (one match, mid-run)",
            timed(lambda: store.event_page(rid, EventFilter(text=needle), 0, 1), repeat),
        ),
        ("host summaries (all hosts)", timed(lambda: store.host_summaries(rid), repeat)),
        ("host totals", timed(lambda: store.host_totals(rid), repeat)),
    ]
    deep = list(range(half, half + 200))
    t0 = time.perf_counter()
    store.stdout_line_offsets(rid, deep)
    rows.append((f"AWX start_line of a page at {half:,}, cold", (time.perf_counter() - t0) * 1000))
    nxt = list(range(half + 200, half + 400))
    rows.append(
        (
            "AWX start_line of the next page (cached blocks)",
            timed(lambda: store.stdout_line_offsets(rid, nxt), repeat),
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per run")
    parser.add_argument("--runs", type=int, default=1, help="runs stored (the last is read)")
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--only", choices=["postgres", "sqlite"])
    args = parser.parse_args()
    results: dict[str, list[tuple[str, float]]] = {}
    total = args.runs * args.events
    with tempfile.TemporaryDirectory(prefix="playledger-reads-") as tmp:
        targets: list[tuple[str, Any]] = []
        if args.only != "postgres":
            targets.append(("SQLite", lambda: contextlib.nullcontext(str(Path(tmp) / "reads.db"))))
        if args.only != "sqlite":
            targets.append(("PostgreSQL", lambda: pg_schema(args.pg)))
        for label, where in targets:
            with where() as url:
                store = open_store(url)
                try:
                    t0 = time.perf_counter()
                    run = build(store, args.runs, args.events, args.hosts)
                    took = time.perf_counter() - t0
                    print(f"{label}: built {total:,} events in {took:.0f}s", flush=True)
                    if label == "PostgreSQL":
                        # Autovacuum's steady state: statistics for the planner, and the
                        # visibility map that lets counts use index-only scans. Right after a
                        # bulk load (minutes), filtered counts and searches are slower.
                        with psycopg.connect(url, autocommit=True) as conn:
                            conn.execute("VACUUM (ANALYZE) events")
                    results[label] = measure(store, run, args.events, args.repeat)
                finally:
                    store.close()
    labels = list(results)
    print(
        f"\n{total:,} events stored ({args.runs} run(s) of {args.events:,}, {args.hosts} hosts); "
        f"reads on the last run, median of {args.repeat} (ms)\n"
    )
    print("| read | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for i, (name, _) in enumerate(results[labels[0]]):
        cells = " | ".join(f"{results[label][i][1]:.1f}" for label in labels)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
