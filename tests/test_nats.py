"""End to end through NATS JetStream and a pool of `playledger worker`s into PostgreSQL, with
faults: workers killed (-9) and stopped (SIGTERM), NATS restarted mid-run, PostgreSQL away for
20 s. Real processes, real servers, loopback only; every wait is bounded.

Zero loss means: every run's stored == emitted, no counter missing or twice, the hash chain
verifies, and a spool is removed only after the workers confirmed the store holds it.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import psycopg
import pytest

from conftest import PYTHON, TESTS, Env
from factories import make_run
from natstest import (
    Names,
    consumer_state,
    create_stream,
    delete_stream,
    fresh_stream,
    private_nats,
    unique_names,
    workers,
)
from pgtest import PG_URL, fresh_schema
from playledger.spool import SpoolFile
from playledger.store import open_store
from playledger.verify import verify_run
from test_faults import wait_for, write_spool

pytestmark = pytest.mark.timeout(600)


def worker_env(env: Env, names: Names, **extra: str) -> dict[str, str]:
    return {**env.vars, **names.env(), "PLAYLEDGER_BUSY_TIMEOUT": "2", **extra}


def shipper_env(env: Env, names: Names, spool_dir: Path) -> dict[str, str]:
    return {
        **env.vars,
        **names.sink_env(),
        "PLAYLEDGER_SPOOL_DIR": str(spool_dir),
        "PLAYLEDGER_BATCH_SIZE": "500",
        "PLAYLEDGER_SHIP_TIMEOUT": "180",
        "PLAYLEDGER_NATS_CONFIRM_TIMEOUT": "90",
    }


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes started by the test; killed on the way out if still running."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


def start_ship(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[str]:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [PYTHON, "-m", "playledger", "ship", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def wait_all(procs: list[subprocess.Popen[str]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def stored_total(db: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0


def assert_complete(db: str, runs: list[str], events_each: int) -> None:
    """Every run complete (verify), and no (run, counter) stored twice."""
    store = open_store(db)
    try:
        for run in runs:
            row = store.run(run)
            report = verify_run(store, row)
            assert report.complete, report.as_dict()
            assert (row.stored, row.emitted) == (events_each, events_each)
            assert store.duplicate_uuids(row.id) == 0
    finally:
        store.close()
    with psycopg.connect(db, autocommit=True) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (run_id, counter)) FROM events"
        ).fetchone() or (0, 0)
    assert total == distinct == events_each * len(runs)


# --- 1. a real ansible run through NATS and two workers ----------------------------------------

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: items
      command: echo {{ item }}
      loop: [1, 2, 3]
      changed_when: false
    - name: fails on one host
      command: /bin/false
      when: inventory_hostname == "h3"
      ignore_errors: true
"""


def test_ansible_run_through_nats_and_two_workers(env: Env, tmp_path: Path) -> None:
    with fresh_stream() as names, fresh_schema() as db:
        env.vars.update(names.sink_env())
        with workers(2, worker_env(env, names), db, tmp_path / "logs") as pool:
            inventory = env.inventory([f"h{i}" for i in range(8)])
            playbook = env.write("site.yml", PLAYBOOK)
            out = env.playledger("run", str(playbook), "-i", str(inventory), "-f", "8")
            assert out.returncode == 0, out.stdout + out.stderr
            assert ", complete, chain ok" in out.stdout, out.stdout
            assert [p.terminate() for p in pool] == [0, 0]
            assert all("worker stopped" in p.log.read_text() for p in pool)
        verify = env.playledger("--db", db, "verify", "latest")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "complete" in verify.stdout and "8 hosts" in verify.stdout
        store = open_store(db)
        try:
            row = store.run("latest")
            assert row.exit_code == 0 and row.status == "successful"
        finally:
            store.close()
        assert not list(env.spool_dir.glob("*.spool"))  # confirmed, then removed


# --- 2. twenty runs, three workers: one killed -9, one stopped with SIGTERM -------------------


@pytest.mark.slow
def test_twenty_runs_three_workers_kill9_and_sigterm(env: Env, tmp_path: Path) -> None:
    events_each = 4000
    with fresh_stream(ack_wait=3.0) as names, fresh_schema() as db, processes() as ships:
        runs = []
        for i in range(20):
            records = make_run(events_each)
            runs.append(records[0].run)
            write_spool(tmp_path / f"spool-{i}", records)
        wenv = worker_env(env, names, PLAYLEDGER_WORKER_FETCH="1")
        wenv["PLAYLEDGER_MAX_BATCH_RECORDS"] = "500"
        with workers(3, wenv, db, tmp_path / "logs") as (killed, stopped, survivor):
            for i in range(20):
                spool_dir = tmp_path / f"spool-{i}"
                ships.append(
                    start_ship(shipper_env(env, names, spool_dir), tmp_path / f"ship-{i}.log")
                )
            total = events_each * 20
            wait_for(
                lambda: killed.metric("playledger_worker_events_committed_total") > 0,
                120,
                "the first worker to commit",
            )
            assert stored_total(db) < total // 2, "too late to kill mid-stream"
            # Hold the tables for a second so that every worker is inside a commit, holding
            # the message it fetched, when the first one is killed.
            with psycopg.connect(db) as conn:
                conn.execute("LOCK TABLE runs, events IN ACCESS EXCLUSIVE MODE")
                time.sleep(1.0)
                killed.kill9()
                conn.rollback()
            wait_for(lambda: stored_total(db) > total // 2, 120, "half of the events")
            assert stopped.terminate() == 0
            assert "worker stopped: every message in hand committed and acked" in (
                stopped.log.read_text()
            )
            codes = wait_all(ships, 300)
            logs = [(tmp_path / f"ship-{i}.log").read_text() for i in range(20)]
            assert codes == [0] * 20, logs
            redelivered = survivor.metric("playledger_worker_messages_redelivered_total")
            assert survivor.terminate() == 0
            found = re.search(r"\((\d+) redelivered\)", stopped.log.read_text())
            assert found, stopped.log.read_text()
            redelivered += int(found[1])
        assert_complete(db, runs, events_each)
        assert all(not any((tmp_path / f"spool-{i}").glob("*.spool")) for i in range(20))
        # The killed worker's unacknowledged message came again to another worker.
        assert redelivered >= 1


# --- 3. NATS restarted mid-run ----------------------------------------------------------------

SLOW_WRITER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from factories import make_run
from playledger.events import encode_record
from playledger.spool import SpoolWriter
records = make_run({events}, run={run!r})
writer = SpoolWriter(Path({path!r}), fsync="never")
for i, record in enumerate(records):
    if i == len(records) - 1:  # the final record waits for the test's word (at most 2 min)
        deadline = time.monotonic() + 120
        while not os.path.exists({go!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
    writer.append(encode_record(record))
    if i % 25 == 0:
        time.sleep(0.1)
writer.close()
"""


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
def test_nats_restarted_mid_run(env: Env, tmp_path: Path, stop: str) -> None:
    """The server goes away while a run is being written: the spool holds the backlog, and
    everything is stored once it is back. kill9: acked messages the server had not yet
    written would be lost with it, and the end-to-end check would send them again (that path
    is forced in test_nats_sink by purging the stream)."""
    events = 2000  # ~8 s of writing, then the final record waits until NATS is back
    run = str(uuid.uuid4())
    spool = SpoolFile(tmp_path / "spool", run)
    spool.spool_dir.mkdir()
    with (
        private_nats(tmp_path) as server,
        fresh_schema() as db,
        processes() as procs,
        ExitStack() as stack,
    ):
        names = unique_names(server.url)
        create_stream(names, ack_wait=5.0)
        stack.callback(delete_stream, names)
        stack.enter_context(workers(1, worker_env(env, names), db, tmp_path / "logs"))
        go = tmp_path / "go"
        script = SLOW_WRITER.format(
            tests=str(TESTS), events=events, run=run, path=str(spool.path), go=str(go)
        )
        writer = subprocess.Popen([PYTHON, "-c", script], env=env.vars, text=True)
        procs.append(writer)
        wait_for(lambda: spool.path.exists() or writer.poll() is not None, 30, "the spool")
        assert writer.poll() is None, "the writer died"
        shipper = start_ship(
            shipper_env(env, names, spool.spool_dir),
            tmp_path / "ship.log",
            "--follow",
            run,
            "--pid",
            str(writer.pid),
        )
        procs.append(shipper)
        wait_for(lambda: stored_total(db) > 0, 60, "the first events stored")
        server.stop(signal.SIGKILL if stop == "kill9" else signal.SIGTERM)
        time.sleep(1)  # an ack on its way when the server stopped is recorded by now
        acked, size = spool.acked(), spool.size()
        time.sleep(4)
        assert writer.poll() is None, "the run should still be writing"
        assert spool.acked() == acked, "nothing can be acknowledged while NATS is down"
        assert spool.size() > size, "the spool holds the backlog"
        server.start()
        go.touch()
        assert writer.wait(timeout=120) == 0
        assert shipper.wait(timeout=240) == 0, (tmp_path / "ship.log").read_text()
        assert not spool.path.exists()
        assert_complete(db, [run], events)


# --- 4. PostgreSQL unavailable for 20 s ----------------------------------------------------------


class TcpProxy:
    """Loopback TCP proxy to PostgreSQL that the test can take down (close every connection,
    refuse new ones) and bring back; the shared server itself is never touched."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                with suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for c in self._conns:
                with suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def close(self) -> None:
        self.down()
        for t in self._threads:
            t.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # either side closed: the connection is over
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.mark.slow
def test_postgres_unavailable_for_20s(env: Env, tmp_path: Path) -> None:
    events_each = 3000
    proxy = TcpProxy(("127.0.0.1", 5432))
    with fresh_stream(ack_wait=5.0) as names, fresh_schema() as db, processes() as ships:
        assert PG_URL.startswith("postgresql://postgres@127.0.0.1:5432/")
        try:
            proxy.up()
            via_proxy = db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}", 1)
            with workers(2, worker_env(env, names), via_proxy, tmp_path / "logs") as pool:
                proxy.down()  # PostgreSQL is away from here on, for 20 s
                down_at = time.monotonic()
                runs = []
                for i in range(3):
                    records = make_run(events_each)
                    runs.append(records[0].run)
                    spool_dir = tmp_path / f"spool-{i}"
                    write_spool(spool_dir, records)
                    ships.append(
                        start_ship(shipper_env(env, names, spool_dir), tmp_path / f"ship-{i}.log")
                    )
                wait_for(
                    lambda: (
                        sum(p.metric("playledger_worker_store_unavailable_total") for p in pool)
                        >= 2
                    ),
                    60,
                    "workers to find the store unavailable",
                )
                while time.monotonic() - down_at < 20:
                    state = consumer_state(names)
                    assert state["ack_floor"] == 0, state  # nothing acknowledged early
                    assert stored_total(db) == 0
                    assert all(p.proc.poll() is None for p in pool)
                    time.sleep(1)
                state = consumer_state(names)
                assert state["ack_pending"] + state["pending"] > 0
                assert all(p.metric("playledger_worker_messages_acked_total") == 0 for p in pool)
                proxy.up()
                codes = wait_all(ships, 300)
                logs = [(tmp_path / f"ship-{i}.log").read_text() for i in range(3)]
                assert codes == [0, 0, 0], logs
                # In-progress acks kept each worker's messages its own through the outage.
                redelivered = "playledger_worker_messages_redelivered_total"
                assert sum(p.metric(redelivered) for p in pool) == 0
                assert [p.terminate() for p in pool] == [0, 0]
            assert_complete(db, runs, events_each)
            assert consumer_state(names)["ack_pending"] == 0
        finally:
            proxy.close()
