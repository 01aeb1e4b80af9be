"""End-to-end events/s from 8 producers through NATS JetStream into PostgreSQL, with 1, 2 and 3
`playledger worker`s, beside the HTTP path (`playledger serve`) and the direct path (shipper
straight into PostgreSQL), measured in one run on this machine.

A producer is a real `playledger ship` process draining a real spool of one sealed run (~800-byte
events) through the configured sink; the clock runs from the producers' start until PostgreSQL
holds every event (the NATS producers also wait for the workers' end-to-end confirmation before
they remove their spools). Each round gets a fresh schema and, for NATS, a stream of its own.
CPU seconds per component (from /proc and the children's rusage) show where the time goes;
"postgres" counts every backend alive through the round (other sessions on a shared server too),
and the direct path's backends exit with its shippers, so there it shows nan.

    .venv/bin/python bench/bench_nats.py --quick      # 100,000 events per round
    .venv/bin/python bench/bench_nats.py              # 1,000,000 events per round
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from bench_pg_store import make_run

from playledger.events import encode_record
from playledger.jetstream import StreamOptions, Subjects, administer, init_stream
from playledger.spool import SUFFIX, SpoolWriter
from playledger.store import open_store, upgrade_store
from playledger.tokens import create_token

PYTHON = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    label: str
    workers: int
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # last repeat


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


def make_spools(template: Path, events: int, producers: int) -> None:
    template.mkdir(parents=True)
    for i in range(producers):
        records = make_run(events // producers)
        spool_dir = template / f"p{i}"
        writer = SpoolWriter(spool_dir / f"{records[0].run}{SUFFIX}", fsync="never")
        for record in records:
            writer.append(encode_record(record))
        writer.close()


@contextmanager
def fresh_schema(pg: str) -> Iterator[str]:
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


def stored(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(stored), 0) FROM runs").fetchone()
        return int(row[0]) if row else 0


def wait_log(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{proc.args!r} did not start: {path.read_text()}")
        time.sleep(0.05)


def run_round(
    r: Round, args: argparse.Namespace, template: Path, work: Path, total: int
) -> tuple[float, dict[str, float]]:
    """One measured round; returns (seconds until PostgreSQL holds every event, CPU split)."""
    tag = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYLEDGER_")}
    env["PLAYLEDGER_BATCH_SIZE"] = str(args.batch)
    # A burst of 1,000,000 events sits in the stream longer than the default ship timeout.
    env["PLAYLEDGER_SHIP_TIMEOUT"] = str(args.limit)
    env["PLAYLEDGER_NATS_CONFIRM_TIMEOUT"] = str(args.limit)
    servers: list[subprocess.Popen[bytes]] = []
    shippers: list[subprocess.Popen[bytes]] = []
    with fresh_schema(args.pg) as db:
        stream = f"BENCH{tag}"
        try:
            if r.label.startswith("nats"):
                names = Subjects(f"bench{tag}")
                administer(
                    args.nats,
                    10,
                    lambda nc: init_stream(nc, stream, names, "workers", StreamOptions()),
                )
                env.update(
                    PLAYLEDGER_SINK=args.nats,
                    PLAYLEDGER_NATS_URL=args.nats,
                    PLAYLEDGER_NATS_STREAM=stream,
                    PLAYLEDGER_NATS_SUBJECT=names.prefix,
                    PLAYLEDGER_NATS_CONSUMER="workers",
                    PLAYLEDGER_WORKER_METRICS_PORT="0",
                )
                for i in range(r.workers):
                    log = work / f"{tag}-worker-{i}.log"
                    with log.open("w") as out:
                        cmd = [PYTHON, "-m", "playledger", "worker", "--db", db]
                        servers.append(subprocess.Popen(cmd, env=env, stderr=out))
                    wait_log(log, "worker consuming", servers[-1], 60)
            elif r.label == "http":
                store = open_store(db)
                token = create_token(store, "bench", "ingest")[0]
                store.close()
                port = free_port()
                env.update(PLAYLEDGER_SINK=f"http://127.0.0.1:{port}", PLAYLEDGER_TOKEN=token)
                log = work / f"{tag}-serve.log"
                with log.open("w") as out:
                    cmd = [PYTHON, "-m", "playledger", "serve", "--port", str(port)]
                    servers.append(  # uvicorn's access log goes to stdout: to the log too
                        subprocess.Popen(
                            cmd, env={**env, "PLAYLEDGER_DB": db}, stdout=out, stderr=out
                        )
                    )
                wait_log(log, "Uvicorn running", servers[-1], 60)
            else:
                env["PLAYLEDGER_DB"] = db
            round_dir = work / tag
            shutil.copytree(template, round_dir)
            cpu0 = children_cpu(), proc_cpu("nats-server"), proc_cpu("postgres")
            server_cpu0 = [pid_cpu(s.pid) for s in servers]
            started = time.perf_counter()
            for i in range(args.producers):
                penv = {**env, "PLAYLEDGER_SPOOL_DIR": str(round_dir / f"p{i}")}
                shippers.append(subprocess.Popen([PYTHON, "-m", "playledger", "ship"], env=penv))
            while stored(db) < total:
                if time.perf_counter() - started > args.limit:
                    raise SystemExit(f"{r.label}: {stored(db):,}/{total:,} after {args.limit}s")
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            codes = [p.wait(timeout=600) for p in shippers]
            server_cpu = sum(pid_cpu(s.pid) for s in servers) - sum(server_cpu0)
            cpu = {
                # direct: the shippers' own backends exit with them, out of /proc's sight
                "postgres": proc_cpu("postgres") - cpu0[2] if servers else float("nan"),
                "nats-server": proc_cpu("nats-server") - cpu0[1],
                "workers" if r.label.startswith("nats") else "serve": server_cpu,
            }
            cpu["producers"] = children_cpu() - cpu0[0]  # the shippers, once waited for
            if any(codes):
                raise SystemExit(f"{r.label}: a producer failed: {codes}")
            shutil.rmtree(round_dir)
            return elapsed, cpu
        finally:
            for p in shippers:
                if p.poll() is None:
                    p.kill()
                p.wait()
            for s in servers:
                if s.poll() is None:
                    s.send_signal(signal.SIGTERM)
                s.wait(timeout=60)
            if r.label.startswith("nats"):

                async def delete(nc: object) -> None:
                    await nc.jetstream().delete_stream(stream)  # type: ignore[attr-defined]

                administer(args.nats, 10, delete)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2000, help="shipper batch (records)")
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--limit", type=float, default=1200, help="seconds per round at most")
    parser.add_argument("--quick", action="store_true", help="100,000 events per round")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP and direct rows")
    args = parser.parse_args()
    if args.quick:
        args.events = 100_000
    total = args.events // args.producers * args.producers
    rounds = [
        Round(f"nats, {n} worker{'s' * (n > 1)}", n) for n in map(int, args.workers.split(","))
    ]
    if not args.no_http:
        rounds += [Round("http", 0), Round("direct", 0)]
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        make_spools(work / "template", total, args.producers)
        print(f"spools: {total:,} events in {args.producers} runs ({time.perf_counter() - t:.0f}s)")
        for _ in range(args.repeat):
            for r in rounds:
                seconds, r.cpu = run_round(r, args, work / "template", work, total)
                r.seconds.append(seconds)
                print(f"  {r.label}: {total / seconds:,.0f} events/s ({seconds:.1f}s)", flush=True)
    print()
    print(f"{total:,} events, {args.producers} producers, batches of {args.batch:,}, "
          f"{os.cpu_count()} CPUs, median of {args.repeat}")  # fmt: skip
    print()
    print("| path | events/s | seconds | CPU s: postgres / nats / workers or serve / producers |")
    print("|---|---:|---:|---|")
    for r in rounds:
        seconds = statistics.median(r.seconds)
        split = " / ".join(
            f"{r.cpu.get(k, 0.0):.0f}" for k in ("postgres", "nats-server", "workers", "producers")
        ) if r.label.startswith("nats") else " / ".join(
            f"{r.cpu.get(k, 0.0):.0f}" for k in ("postgres", "nats-server", "serve", "producers")
        )  # fmt: skip
        print(f"| {r.label} | {total / seconds:,.0f} | {seconds:.1f} | {split} |")


if __name__ == "__main__":
    main()
