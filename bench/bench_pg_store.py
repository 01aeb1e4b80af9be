"""Batch ingest rate of the PostgreSQL store, next to the raw binary COPY floor.

Both measured in one run against the same server, in a fresh schema dropped afterwards:
- store: `PostgresStore.ingest` of sealed ~800-byte events, --batch per transaction (lock run
  rows, read stored counters, binary COPY of the new events, durable commit);
- floor: binary COPY of the same rows into an unindexed, unpartitioned copy of the table.

    .venv/bin/python bench/bench_pg_store.py --events 200000 --batch 2000
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import date
from typing import Any

import psycopg
from msgspec.structs import astuple

from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, seal
from playledger.store import upgrade_store
from playledger.store.postgres import _COPY_TYPES, PostgresStore


def make_run(n: int) -> list[RunStart | Event | RunEnd]:
    run = str(uuid.uuid4())
    created = "2026-12-04T00:00:00.000000Z"
    records: list[RunStart | Event | RunEnd] = [
        RunStart(run, created, "site.yml", ["ansible-playbook"], "/", "u", "c", "2.19", "0", 1)
    ]
    prev = GENESIS_HASH
    for counter in range(1, n + 1):
        host = f"host-{counter % 500}"
        e = Event(
            run=run,
            counter=counter,
            uuid=str(uuid.uuid4()),
            parent_uuid=str(uuid.uuid4()),
            created=created,
            event="runner_on_ok",
            host=host,
            task=f"task {counter // 500}",
            task_uuid=f"t-{counter // 500}",
            task_action="command",
            playbook="site.yml",
            changed=counter % 3 == 0,
            stdout=f"ok: [{host}]",
            event_data=encode_data({"host": host, "res": {"stdout": "x" * 400, "rc": 0}}),
        )
        prev = seal(e, prev)
        records.append(e)
    records.append(RunEnd(run, created, n))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    admin = psycopg.connect(args.url, autocommit=True)
    store_rates, floor_rates = [], []
    for _ in range(args.repeat):
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin.execute(f"CREATE SCHEMA {schema}")
        url = f"{args.url}?options=-c%20search_path%3D{schema}"
        try:
            upgrade_store(url)
            runs = [make_run(args.events // args.runs) for _ in range(args.runs)]
            store = PostgresStore(url)
            started = time.perf_counter()
            for records in runs:
                for i in range(0, len(records), args.batch):
                    store.ingest(records[i : i + args.batch])
            store_rates.append(args.events / (time.perf_counter() - started))
            store.close()

            rows: list[tuple[Any, ...]] = [
                (1, date(2026, 12, 4), *astuple(e)[1:], None)
                for records in runs
                for e in records
                if isinstance(e, Event)
            ]
            with psycopg.connect(url) as conn:
                conn.execute("CREATE TABLE floor (LIKE events)")
                conn.commit()
                started = time.perf_counter()
                for i in range(0, len(rows), args.batch):
                    with conn.cursor().copy("COPY floor FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(_COPY_TYPES)
                        for row in rows[i : i + args.batch]:
                            copy.write_row(row)
                    conn.commit()
                floor_rates.append(len(rows) / (time.perf_counter() - started))
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    print(f"{args.events:,} events, {args.runs} runs, batches of {args.batch:,}, median of "
          f"{args.repeat}:")  # fmt: skip
    print(f"  PostgresStore.ingest          {statistics.median(store_rates):>10,.0f} events/s")
    print(f"  raw binary COPY (no indexes)  {statistics.median(floor_rates):>10,.0f} events/s")


if __name__ == "__main__":
    main()
