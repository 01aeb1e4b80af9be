"""Core benchmarks of playledger, measured side by side in one run on this machine.

(a) Callback overhead: wall time of a real `ansible-playbook` (N hosts x 10 cheap tasks, local
    connection) with no audit callback, under `playledger run`, and with the plugin enabled
    through the environment. The variants are interleaved and each is the median of --repeat
    runs, because a 2-core machine is noisy.
(b) Ingest: events/s from a real spool (SpoolWriter, sealed events.Event records) through the
    real shipper (`ship_spool`) into a fresh SQLiteStore with durable commits, next to the raw
    SQLite floor (executemany of the same rows, same schema, WAL, synchronous=FULL) and the
    spool append rate.

    .venv/bin/python bench/bench_core.py --quick    # about 3 minutes
    .venv/bin/python bench/bench_core.py            # 500 hosts, 3 repeats: about 30 minutes
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playledger.callback import plugin_path
from playledger.events import GENESIS_HASH, Event, RunEnd, RunStart, encode_data, encode_record
from playledger.events import seal as seal_event
from playledger.settings import Settings
from playledger.shipper import ship_spool
from playledger.spool import SUFFIX, SpoolFile, SpoolWriter
from playledger.store.sqlite import SQLiteStore

BIN = Path(sys.executable).parent
DEFAULT_BATCH = Settings.load(environ={}).batch_size
TASK_NAMES = (
    "say hello",
    "remember a fact",
    "check the fact",
    "run true",
    "say the fact",
    "remember another fact",
    "check both facts",
    "run true again",
    "say goodbye",
    "final check",
)

PLAYBOOK = """\
- name: bench play
  hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: "hello {{ inventory_hostname }}"
    - name: remember a fact
      ansible.builtin.set_fact:
        bench_fact: "{{ inventory_hostname }}-1"
    - name: check the fact
      ansible.builtin.assert:
        that: bench_fact is defined
        quiet: true
    - name: run true
      ansible.builtin.command: "true"
      changed_when: false
    - name: say the fact
      ansible.builtin.debug:
        var: bench_fact
    - name: remember another fact
      ansible.builtin.set_fact:
        bench_other: "{{ bench_fact }}-2"
    - name: check both facts
      ansible.builtin.assert:
        that:
          - bench_fact is defined
          - bench_other is defined
    - name: run true again
      ansible.builtin.command: "true"
    - name: say goodbye
      ansible.builtin.debug:
        msg: "bye {{ inventory_hostname }}"
    - name: final check
      ansible.builtin.assert:
        that: bench_other.endswith('-2')
        quiet: true
"""


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_rate(n: float) -> str:
    return f"{n:,.0f}/s"


# --- (a) callback overhead -------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    label: str
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # user+sys of the process tree we waited for
    events: list[int] = field(default_factory=list)


def children_cpu() -> float:
    """CPU seconds of every reaped descendant: ansible-playbook, its workers, and under
    `playledger run` the shipper (the plugin's own shipper is detached and not counted)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def base_env(root: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PLAYLEDGER_", "ANSIBLE_"))}
    return {
        **keep,
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-tmp"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


def write_project(root: Path, hosts: int) -> None:
    lines = ["[all]"]
    lines += [f"node-{i:04d} ansible_connection=local" for i in range(hosts)]
    lines += ["[all:vars]", f"ansible_python_interpreter={sys.executable}"]
    (root / "hosts.ini").write_text("\n".join(lines) + "\n")
    (root / "site.yml").write_text(PLAYBOOK)


def wait_drained(spool_dir: Path, timeout: float) -> None:
    """The plugin's own shipper runs detached: wait (untimed) until it removed the spool."""
    deadline = time.monotonic() + timeout
    while any(spool_dir.glob(f"*{SUFFIX}")):
        if time.monotonic() > deadline:
            raise SystemExit(f"shipper did not drain {spool_dir} in {timeout:.0f}s")
        time.sleep(0.2)


def stored_complete(db: Path) -> int:
    """Events stored for the one run in `db`; exits unless stored == emitted."""
    store = SQLiteStore(str(db))
    try:
        run = store.run("latest")
    finally:
        store.close()
    if run.emitted is None or run.stored != run.emitted:
        raise SystemExit(f"{db}: incomplete run: stored {run.stored}, emitted {run.emitted}")
    return run.stored


def run_variant(variant: Variant, root: Path, forks: int, rep: int) -> None:
    work = root / f"{variant.name}-{rep}"
    work.mkdir()
    env = base_env(root)
    db = work / "playledger.db"
    spool_dir = work / "spool"
    args = ["site.yml", "-i", "hosts.ini", "-f", str(forks)]
    if variant.name == "none":
        cmd = [str(BIN / "ansible-playbook"), *args]
    elif variant.name == "run":
        env |= {"PLAYLEDGER_DB": str(db), "PLAYLEDGER_SPOOL_DIR": str(spool_dir)}
        cmd = [str(BIN / "playledger"), "run", *args]
    else:
        env |= {
            "PLAYLEDGER_DB": str(db),
            "PLAYLEDGER_SPOOL_DIR": str(spool_dir),
            "ANSIBLE_CALLBACK_PLUGINS": str(plugin_path()),
            "ANSIBLE_CALLBACKS_ENABLED": "playledger",
        }
        cmd = [str(BIN / "ansible-playbook"), *args]
    out = work / "stdout.txt"
    with out.open("wb") as f:
        cpu0 = children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - start
        cpu = children_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{variant.label} failed ({proc.returncode}); see {out}")
    if variant.name == "plugin":
        wait_drained(spool_dir, timeout=600)
    if variant.name != "none":
        variant.events.append(stored_complete(db))
    variant.times.append(elapsed)
    variant.cpu.append(cpu)
    print(f"  rep {rep + 1}: {variant.label}: {elapsed:.1f}s", file=sys.stderr, flush=True)


def bench_callback(root: Path, hosts: int, forks: int, repeat: int) -> list[Variant]:
    write_project(root, hosts)
    variants = [
        Variant("none", "ansible-playbook, no audit callback"),
        Variant("run", "`playledger run` (SQLite, shipper + verify included)"),
        Variant("plugin", "ansible-playbook + plugin via env (own shipper)"),
    ]
    for rep in range(repeat):
        # Rotate the order so no variant always runs first (cold caches) or last.
        for i in range(len(variants)):
            run_variant(variants[(i + rep) % len(variants)], root, forks, rep)
    return variants


# --- (b) ingest --------------------------------------------------------------------------------


@dataclass
class Synthetic:
    run: str
    payloads: list[bytes]  # framed by SpoolWriter: RunStart, events..., RunEnd
    rows: list[tuple[Any, ...]]  # the events table rows (run_id 1) for the raw floor
    prepare_s: float  # build + seal + encode of the events


def synthesize(n: int, hosts: int = 500) -> Synthetic:
    """`n` sealed events of about 800 bytes each, shaped like runner_on_ok results."""
    run = str(uuidlib.uuid4())
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    start = RunStart(
        run=run,
        created=now,
        playbook="/srv/ansible/site.yml",
        argv=["ansible-playbook", "site.yml", "-i", "hosts.ini"],
        cwd="/srv/ansible",
        user="bench",
        controller=platform.node(),
        ansible_version="2.19",
        playledger_version="bench",
        pid=os.getpid(),
    )
    payloads = [encode_record(start)]
    rows: list[tuple[Any, ...]] = []
    play_uuid = str(uuidlib.uuid4())
    task_uuids = [str(uuidlib.uuid4()) for _ in TASK_NAMES]
    prev = GENESIS_HASH
    t0 = time.perf_counter()
    for counter in range(1, n + 1):
        host = f"node-{counter % hosts:04d}"
        t = (counter // hosts) % len(TASK_NAMES)
        changed = counter % 5 == 0
        failed = counter % 97 == 0
        name = "runner_on_failed" if failed else "runner_on_ok"
        data = encode_data(
            {
                "host": host,
                "res": {
                    "changed": changed,
                    "msg": "All assertions passed",
                    "rc": 1 if failed else 0,
                },
                "task_path": f"/srv/ansible/site.yml:{4 + 3 * t}",
                "no_log": False,
            }
        )
        event = Event(
            run=run,
            counter=counter,
            uuid=str(uuidlib.uuid4()),
            parent_uuid=task_uuids[t],
            created=now,
            event=name,
            host=host,
            play="bench play",
            play_uuid=play_uuid,
            task=TASK_NAMES[t],
            task_uuid=task_uuids[t],
            task_action="ansible.builtin.assert",
            role=None,
            playbook="/srv/ansible/site.yml",
            changed=changed,
            failed=failed,
            stdout=f"{'fatal' if failed else 'ok'}: [{host}]",
            event_data=data,
        )
        prev = seal_event(event, prev)
        payloads.append(encode_record(event))
        rows.append(
            (
                1,
                event.counter,
                event.uuid,
                event.parent_uuid,
                event.created,
                event.event,
                event.host,
                event.play,
                event.play_uuid,
                event.task,
                event.task_uuid,
                event.task_action,
                event.role,
                event.playbook,
                int(event.changed),
                int(event.failed),
                event.stdout,
                bytes(event.event_data).decode(),
                event.prev_hash,
                event.hash,
            )
        )
    prepare = time.perf_counter() - t0
    payloads.append(encode_record(RunEnd(run=run, created=now, emitted=n)))
    return Synthetic(run, payloads, rows, prepare)


def write_spool(spool_dir: Path, syn: Synthetic) -> float:
    """Append every record with the real writer (default fsync policy); returns seconds."""
    spool_dir.mkdir(parents=True)
    writer = SpoolWriter(spool_dir / f"{syn.run}{SUFFIX}", fsync="interval", fsync_interval=0.2)
    append = writer.append
    t0 = time.perf_counter()
    for payload in syn.payloads:
        append(payload)
    writer.close()  # final fsync included
    return time.perf_counter() - t0


def ship(spool_dir: Path, db: Path, syn: Synthetic, batch_size: int, cpu: list[float]) -> float:
    store = SQLiteStore(str(db))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        report = ship_spool(SpoolFile(spool_dir, syn.run), store, batch_size, timeout=60)
        elapsed = time.perf_counter() - t0
        cpu.append(time.process_time() - c0)
        run = store.run(syn.run)
    finally:
        store.close()
    if not report.finished or report.inserted != len(syn.rows) or run.stored != run.emitted:
        raise SystemExit(f"shipping incomplete: {report} stored={run.stored}")
    return elapsed


def sqlite_floor(db: Path, syn: Synthetic, per_tx: int) -> float:
    """executemany of the same rows, prebuilt, on the store's own connection: same schema and
    pragmas (WAL, synchronous=FULL, cache and checkpoint sizes), none of the shipper's work."""
    store = SQLiteStore(str(db))
    con = store._db  # the writer connection, so its pragmas cannot drift from the store's
    try:
        con.execute("INSERT INTO runs (uuid) VALUES (?)", (syn.run,))
        sql = f"INSERT INTO events VALUES (?{', ?' * 19})"
        rows = syn.rows
        t0 = time.perf_counter()
        for i in range(0, len(rows), per_tx):
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, rows[i : i + per_tx])
            con.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        store.close()


@dataclass
class IngestResults:
    events: int
    record_bytes: float
    prepare_s: float
    append: list[float] = field(default_factory=list)
    ship: dict[int, list[float]] = field(default_factory=dict)  # batch size -> seconds
    ship_cpu: dict[int, list[float]] = field(default_factory=dict)  # the shipper's CPU seconds
    floor: list[float] = field(default_factory=list)


def bench_ingest(
    root: Path, n: int, repeat: int, batch_sizes: list[int], per_tx: int
) -> IngestResults:
    print(f"  synthesizing {n:,} events", file=sys.stderr, flush=True)
    syn = synthesize(n)
    gc.collect()
    gc.freeze()  # the million rows kept for the floor must not slow the shipper's GC passes
    size = sum(len(p) for p in syn.payloads[1:-1]) / n
    res = IngestResults(n, size, syn.prepare_s)
    steps: list[int | None] = [None, *batch_sizes]  # None: the raw floor
    for rep in range(repeat):
        # Alternate the order: a later step meets a warmer page cache and a bigger WAL history.
        for step in steps if rep % 2 == 0 else steps[::-1]:
            db = root / f"{step or 'floor'}-{rep}.db"
            if step is None:
                res.floor.append(sqlite_floor(db, syn, per_tx))
                took = res.floor[-1]
            else:
                spool_dir = root / f"spool-{step}-{rep}"
                res.append.append(write_spool(spool_dir, syn))
                cpu = res.ship_cpu.setdefault(step, [])
                res.ship.setdefault(step, []).append(ship(spool_dir, db, syn, step, cpu))
                took = res.ship[step][-1]
                shutil.rmtree(spool_dir)
            name = f"ship, batch {step}" if step else "floor"
            print(f"  rep {rep + 1}: {name}: {n / took:,.0f}/s", file=sys.stderr, flush=True)
            for stale in root.glob(f"{db.name}*"):
                stale.unlink()
    return res


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 hosts, 1 repeat")
    parser.add_argument("--hosts", type=int, help="hosts in the playbook run (default 500)")
    parser.add_argument("--forks", type=int, default=10, help="ansible-playbook -f (default 10)")
    parser.add_argument("--repeat", type=int, help="runs per variant (default 3; quick 1)")
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic events")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[DEFAULT_BATCH],
        help=f"shipper batch size(s) to measure (default {DEFAULT_BATCH}, PLAYLEDGER_BATCH_SIZE)",
    )
    parser.add_argument("--floor-tx", type=int, default=2000, help="rows per floor transaction")
    parser.add_argument("--skip-callback", action="store_true", help="only the ingest part")
    parser.add_argument("--skip-ingest", action="store_true", help="only the callback part")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: /tmp)")
    args = parser.parse_args()
    hosts = args.hosts or (100 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)

    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="playledger-bench-", dir=args.tmp) as tmp:
        root = Path(tmp)
        if not args.skip_callback:
            print(f"callback: {hosts} hosts x 10 tasks, -f {args.forks}", file=sys.stderr)
            (root / "cb").mkdir()
            variants = bench_callback(root / "cb", hosts, args.forks, repeat)
            base, base_cpu = variants[0].times, variants[0].cpu
            for v in variants:
                t, cpu = median(v.times), median(v.cpu)
                runs = ", ".join(f"{x:.1f}" for x in v.times)
                events = f"; {v.events[0]:,} events stored" if v.events else ""
                ratio = "1.00"
                if v is not variants[0]:
                    # Each repetition's ratio pairs runs made minutes apart, under similar load.
                    paired = ", ".join(f"{a / b:.2f}" for a, b in zip(v.times, base, strict=True))
                    ratio = (
                        f"**{t / median(base):.3f}** (per repetition: {paired}); "
                        f"CPU {cpu / median(base_cpu):.3f}"
                    )
                rows.append(
                    (
                        f"{hosts} hosts x 10 tasks, -f {args.forks}: {v.label}",
                        f"{t:.1f} s wall, {cpu:.0f} CPU-s (runs: {runs}{events})",
                        ratio,
                    )
                )
        if not args.skip_ingest:
            print(f"ingest: {args.events:,} events", file=sys.stderr)
            (root / "in").mkdir()
            batches = args.batch_size
            r = bench_ingest(root / "in", args.events, repeat, batches, args.floor_tx)
            n = r.events
            rows += [
                (
                    f"spool append, {r.record_bytes:.0f}-byte records, fsync every 0.2 s",
                    fmt_rate(n / median(r.append)),
                    "",
                ),
                (
                    "build + seal + encode an event (untimed for the others)",
                    fmt_rate(n / r.prepare_s),
                    "",
                ),
                (
                    f"raw SQLite floor: executemany, {args.floor_tx} rows/tx, store's schema "
                    "and pragmas (WAL, synchronous=FULL)",
                    fmt_rate(n / median(r.floor)),
                    "",
                ),
            ]
            for batch in args.batch_size:
                t = median(r.ship[batch])
                rows.append(
                    (
                        f"spool -> shipper -> SQLiteStore, batch {batch}, durable",
                        f"{fmt_rate(n / t)} ({n / median(r.ship_cpu[batch]):,.0f} per CPU-s)",
                        f"{median(r.floor) / t:.2f} of floor (target >= 50,000/s)",
                    )
                )

    print(
        f"\nplayledger bench_core, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, median of {repeat}\n"
    )
    print("| measurement | result (median) | ratio (wall target <= 1.05) |")
    print("|---|---:|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
