"""HTTP ingest throughput: 8 producers -> `playledger serve` -> PostgreSQL and SQLite, next to
the raw batched insert rate of each database, measured in the same run on this machine.

A producer is a real `playledger ship` process draining a real spool of one sealed run
(~800-byte events, bench_pg_store.make_run) through the HTTP sink (keep-alive, compression,
batches of --batch records); the server answers 200 only after a durable commit. The clock
runs from the producers' start until the last of them has drained its spool (every event
acknowledged, so committed); the stored count is checked afterwards.

Raw rates (one connection, same rows, batches of --batch, a durable commit per batch):
- PostgreSQL: binary COPY into an unindexed, unpartitioned copy of the events table;
- SQLite: executemany INSERT into an unindexed table, WAL, synchronous=FULL.

    .venv/bin/python bench/bench_http.py --quick      # 200,000 events
    .venv/bin/python bench/bench_http.py              # 1,000,000 events
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from bench_pg_store import make_run
from msgspec.structs import astuple

from playledger.events import Event, encode_record
from playledger.settings import Settings
from playledger.spool import SUFFIX, SpoolWriter
from playledger.store import open_store, upgrade_store
from playledger.store.postgres import _COPY_TYPES
from playledger.tokens import create_token

PYTHON = sys.executable
DEFAULT_BATCH = Settings.load(environ={}).batch_size
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    label: str
    events: int
    seconds: float
    cpu: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu(match: str) -> float:
    """CPU seconds used so far by live processes whose command name starts with `match`."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith(match):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def pid_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def make_spools(template: Path, runs: list[list[Any]]) -> None:
    for i, records in enumerate(runs):
        writer = SpoolWriter(template / f"p{i}" / f"{records[0].run}{SUFFIX}", fsync="never")
        for record in records:
            writer.append(encode_record(record))
        writer.close()


@contextmanager
def pg_schema(pg: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        sep = "&" if "?" in pg else "?"
        url = f"{pg}{sep}options={quote(f'-c search_path={schema}')}"
        try:
            upgrade_store(url)
            yield url
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def stored(db: str) -> int:
    sql = "SELECT coalesce(sum(stored), 0) FROM runs"
    if db.startswith("postgres"):
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
    else:
        with sqlite3.connect(db) as lite:
            row = lite.execute(sql).fetchone()
    return int(row[0]) if row else 0


def wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.args!r} did not start: {path.read_text()}")
        time.sleep(0.05)


def http_round(
    label: str, db: str, args: argparse.Namespace, template: Path, work: Path, total: int
) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYLEDGER_")}
    env["PLAYLEDGER_BATCH_SIZE"] = str(args.batch)
    store = open_store(db)
    token = create_token(store, "bench", "ingest")[0]
    store.close()
    port = free_port()
    env.update(PLAYLEDGER_SINK=f"http://127.0.0.1:{port}", PLAYLEDGER_TOKEN=token)
    log = work / f"{label}-serve.log"
    round_dir = work / f"{label}-spools"
    shutil.copytree(template, round_dir)
    shippers: list[subprocess.Popen[bytes]] = []
    with log.open("w") as out:
        cmd = [PYTHON, "-m", "playledger", "serve", "--port", str(port)]
        server = subprocess.Popen(cmd, env={**env, "PLAYLEDGER_DB": db}, stderr=out)
    try:
        wait_log(log, "Uvicorn running", server, 60)
        cpu0 = children_cpu(), proc_cpu("postgres"), pid_cpu(server.pid)
        started = time.perf_counter()
        for i in range(args.producers):
            penv = {
                **env,
                "PLAYLEDGER_SPOOL_DIR": str(round_dir / f"p{i}"),
                "PLAYLEDGER_DB": str(work / "producer-must-not-exist.db"),
            }
            shippers.append(subprocess.Popen([PYTHON, "-m", "playledger", "ship"], env=penv))
        codes = [p.wait(timeout=args.limit) for p in shippers]
        seconds = time.perf_counter() - started
        serve_cpu = pid_cpu(server.pid) - cpu0[2]
        pg_cpu = proc_cpu("postgres") - cpu0[1]
        producers_cpu = children_cpu() - cpu0[0]
        if any(codes):
            raise SystemExit(f"{label}: a producer failed: {codes}")
        got = stored(db)
        if got != total:
            raise SystemExit(f"{label}: {got:,} of {total:,} events stored")
        cpu = f"{serve_cpu:.0f} / {producers_cpu:.0f}" + (
            f" / {pg_cpu:.0f}" if db.startswith("postgres") else ""
        )
        return Result(label, total, seconds, cpu)
    finally:
        for p in shippers:
            if p.poll() is None:
                p.kill()
            p.wait()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(round_dir, ignore_errors=True)


def rows_of(runs: list[list[Any]]) -> list[tuple[Any, ...]]:
    return [
        (1, date(2026, 12, 4), *astuple(e)[1:], None)
        for records in runs
        for e in records
        if isinstance(e, Event)
    ]


def raw_pg(url: str, rows: list[tuple[Any, ...]], batch: int) -> Result:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE floor (LIKE events)")
        conn.commit()
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.cursor().copy("COPY floor FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows[i : i + batch]:
                    copy.write_row(row)
            conn.commit()
        return Result("raw binary COPY", len(rows), time.perf_counter() - started)


def raw_sqlite(path: Path, runs: list[list[Any]], batch: int) -> Result:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    fields = [f for f in Event.__struct_fields__ if f != "run"]
    db.execute(f"CREATE TABLE floor (run_id INTEGER, {', '.join(fields)})")
    sql = f"INSERT INTO floor VALUES (1, {', '.join('?' * len(fields))})"
    rows = [
        tuple(bytes(v) if not isinstance(v, str | int | float | type(None)) else v
              for v in astuple(e)[1:])
        for records in runs
        for e in records
        if isinstance(e, Event)
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        db.execute("BEGIN")
        db.executemany(sql, rows[i : i + batch])
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.close()
    return Result("raw executemany", len(rows), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"records per batch / txn (default {DEFAULT_BATCH:,}, as PLAYLEDGER_BATCH_SIZE)",
    )
    parser.add_argument("--limit", type=float, default=3600, help="seconds per round at most")
    parser.add_argument("--quick", action="store_true", help="200,000 events")
    parser.add_argument("--only", choices=["postgres", "sqlite"], help="one store only")
    args = parser.parse_args()
    if args.quick:
        args.events = 200_000
    per = args.events // args.producers
    total = per * args.producers
    stores = [args.only] if args.only else ["postgres", "sqlite"]
    results: dict[str, tuple[Result, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        runs = [make_run(per) for _ in range(args.producers)]
        make_spools(work / "template", runs)
        print(f"spools: {total:,} events in {args.producers} runs ({time.perf_counter() - t:.0f}s)")
        for kind in stores:
            if kind == "postgres":
                with pg_schema(args.pg) as url:
                    http = http_round("postgres", url, args, work / "template", work, total)
                    print(f"  HTTP -> PostgreSQL: {http.rate:,.0f} events/s", flush=True)
                    raw = raw_pg(url, rows_of(runs), args.batch)
                    print(f"  {raw.label}: {raw.rate:,.0f} events/s", flush=True)
                results["PostgreSQL"] = (http, raw)
            else:
                db = work / "sqlite" / "server.db"
                http = http_round("sqlite", str(db), args, work / "template", work, total)
                print(f"  HTTP -> SQLite: {http.rate:,.0f} events/s", flush=True)
                raw = raw_sqlite(work / "sqlite" / "floor.db", runs, args.batch)
                print(f"  {raw.label}: {raw.rate:,.0f} events/s", flush=True)
                results["SQLite"] = (http, raw)
    print()
    print(f"{total:,} events, {args.producers} producers (`playledger ship`), batches of "
          f"{args.batch:,}, {os.cpu_count()} CPUs")  # fmt: skip
    print()
    print("| store | HTTP events/s | seconds | raw events/s (method) | HTTP / raw "
          "| CPU s: serve / producers / postgres |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for name, (http, raw) in results.items():
        print(f"| {name} | {http.rate:,.0f} | {http.seconds:.1f} | {raw.rate:,.0f} ({raw.label}) "
              f"| {http.rate / raw.rate:.2f} | {http.cpu} |")  # fmt: skip


if __name__ == "__main__":
    main()
