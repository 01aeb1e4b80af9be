"""Fault tests with real processes: kill -9 of ansible-playbook and of the shipper, torn and
corrupt spools, a store locked by another process, double shipping, bad input.

Zero loss means: every event that reached the spool is stored exactly once, and what did not
(a torn record) is named in the quarantine, by `ship` and by `verify`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import PYTHON, Env
from factories import make_run
from playledger.errors import RunNotFound
from playledger.events import Event, RunEnd, RunStart, encode_record
from playledger.spool import SUFFIX, SpoolWriter, writer_alive
from playledger.store import Store

T = TypeVar("T")

# --- helpers ---------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll until `predicate` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def frames(buf: bytes) -> tuple[list[dict[str, object]], int]:
    """An independent reader of the spool format: whole, checksummed records from the start,
    decoded as JSON; and the offset where the valid prefix ends."""
    out: list[dict[str, object]] = []
    pos = 0
    while pos + 12 <= len(buf):
        magic, length, crc = struct.unpack_from("<4sII", buf, pos)
        payload = buf[pos + 12 : pos + 12 + length]
        if magic != b"PLR1" or len(payload) < length or zlib.crc32(payload) != crc:
            break
        out.append(json.loads(payload))
        pos += 12 + length
    return out, pos


def event_counters(records: list[dict[str, object]]) -> list[int]:
    return [int(str(r["counter"])) for r in records if r["kind"] == "event"]


@contextmanager
def opened(env: Env) -> Iterator[Store]:
    store = env.store()
    try:
        yield store
    finally:
        store.close()


def stored_counters(env: Env, run: str) -> list[int]:
    with opened(env) as store:
        try:
            row = store.run(run)
        except RunNotFound:
            return []
        return list(store.counters(row.id))


def write_spool(
    spool_dir: Path, records: list[RunStart | Event | RunEnd], fsync: str = "never"
) -> Path:
    """A spool as the callback writes it: the real writer, closed (the writer is gone)."""
    path = spool_dir / f"{records[0].run}{SUFFIX}"
    writer = SpoolWriter(path, fsync=fsync)
    for record in records:
        writer.append(encode_record(record))
    writer.close()
    return path


def record_offsets(path: Path) -> list[int]:
    offsets: list[int] = []
    buf = path.read_bytes()
    pos = 0
    while pos < len(buf):
        offsets.append(pos)
        pos += 12 + struct.unpack_from("<I", buf, pos + 4)[0]
    return offsets


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of `pid`, read from /proc."""
    found: list[tuple[int, str]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        found.append((int(entry.name), cmd))
    return found


def child(pid: int, needle: str) -> int | None:
    for cpid, cmd in children(pid):
        if needle in cmd:
            return cpid
    return None


def the_spool(env: Env) -> Path | None:
    found = list(env.spool_dir.glob(f"*{SUFFIX}"))
    return found[0] if len(found) == 1 else None


def spool_events(env: Env) -> int:
    path = the_spool(env)
    return len(event_counters(frames(path.read_bytes())[0])) if path else 0


def spooled_starts(env: Env, task: str) -> int:
    """How many runner_on_start events of `task` are in the spool."""
    path = the_spool(env)
    records = frames(path.read_bytes())[0] if path else []
    return sum(1 for r in records if r.get("event") == "runner_on_start" and r["task"] == task)


@contextmanager
def playledger_run(env: Env, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`playledger run ...` as a process of its own session; killed on the way out if needed."""
    out = (env.root / "run.out").open("w")
    err = (env.root / "run.err").open("w")
    proc = subprocess.Popen(
        [PYTHON, "-m", "playledger", "run", *args],
        env=env.vars,
        cwd=env.root,
        stdout=out,
        stderr=err,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        out.close()
        err.close()


def kill9(pid: int) -> None:
    with suppress(ProcessLookupError):  # already gone
        os.kill(pid, signal.SIGKILL)


LONG_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: hello
      debug: msg="hello {{ inventory_hostname }}"
    - name: slow
      command: sleep {{ nap }}
      loop: [1, 2, 3, 4, 5, 6, 7, 8]
      changed_when: false
    - name: never reached before the kill
      debug: msg=late
"""

# --- 1. kill -9 of ansible-playbook ----------------------------------------------------------


@pytest.mark.parametrize("shipper", ["paused", "killed"])
def test_kill_9_ansible_playbook_keeps_every_spooled_event(env: Env, shipper: str) -> None:
    """paused: the run's own shipper is stopped while ansible-playbook is killed, then resumed,
    and must drain the rest. killed: the shipper dies too, `playledger ship` finishes."""
    env.inventory([f"node-{i}" for i in range(6)], extra="nap=0.4")
    env.write("site.yml", LONG_PLAYBOOK)
    workers: list[int] = []
    with playledger_run(env, "site.yml", "-i", "hosts.ini", "-f", "3") as run:
        ansible = wait_for(lambda: child(run.pid, "ansible-playbook"), 60, "ansible-playbook")
        ship_pid = wait_for(lambda: child(run.pid, " ship --follow"), 60, "the shipper")
        try:
            wait_for(lambda: spool_events(env) >= 40, 120, "40 events in the spool")
            spool = the_spool(env)
            assert spool is not None
            run_uuid = spool.name.removesuffix(SUFFIX)
            if shipper == "paused":
                os.kill(ship_pid, signal.SIGSTOP)
            else:
                kill9(ship_pid)
            os.kill(ansible, signal.SIGSTOP)  # no new worker between the listing and the kill
            workers = [pid for pid, _ in children(ansible)]
            kill9(ansible)
            # The lock ends with ansible-playbook, whatever its orphaned workers do.
            wait_for(lambda: not writer_alive(spool), 10, "the writer's lock to be released")
            records, valid_end = frames(spool.read_bytes())
            torn = spool.stat().st_size - valid_end
            spooled = event_counters(records)
            assert spooled == list(range(1, len(spooled) + 1)), "the spool has no holes"
            assert len(spooled) >= 40
            assert not any(r["kind"] == "end" for r in records), "killed: no final record"
        finally:
            if shipper == "paused":
                os.kill(ship_pid, signal.SIGCONT)  # resumes (or lets a SIGKILL land)
            for pid in workers:  # orphans can block forever on their dead parent's pipe
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        rc = run.wait(timeout=120)
    assert rc != 0
    if shipper == "paused":
        assert "INCOMPLETE (no final record" in (env.root / "run.out").read_text()

    before = stored_counters(env, run_uuid)
    assert before == list(range(1, len(before) + 1)), "the stored events are a gap-free prefix"
    verify = env.playledger("verify", run_uuid)
    assert verify.returncode != 0
    assert "no final record" in verify.stdout

    ship = env.playledger("ship")
    assert ship.returncode == (1 if torn else 0), ship.stderr
    after = stored_counters(env, run_uuid)
    assert after == spooled, "everything that reached the spool is stored, once"
    with opened(env) as store:
        row = store.run(run_uuid)
        assert row.status == "aborted"
        assert row.emitted is None
        assert row.stored == len(spooled)
    verify = env.playledger("verify", run_uuid)
    assert verify.returncode != 0
    assert "no final record" in verify.stdout
    assert not the_spool(env), "a fully shipped spool is removed"


def test_kill_9_ansible_playbook_during_long_task_run_returns_promptly(env: Env) -> None:
    """Orphaned workers run on for minutes in a long loop; neither the spool's lock nor the
    run's shipper may wait for them: only ansible-playbook itself writes."""
    env.inventory(["node-0", "node-1"], extra="nap=30")
    env.write("site.yml", LONG_PLAYBOOK)
    workers: list[int] = []
    with playledger_run(env, "site.yml", "-i", "hosts.ini", "-f", "2") as run:
        ansible = wait_for(lambda: child(run.pid, "ansible-playbook"), 60, "ansible-playbook")
        spool = wait_for(lambda: the_spool(env), 60, "the spool")
        try:
            # Both workers are inside `sleep 30` once their runner_on_start events are spooled.
            wait_for(lambda: spooled_starts(env, "slow") >= 2, 60, "the slow task to start")
            time.sleep(0.5)
            os.kill(ansible, signal.SIGSTOP)  # no new worker between the listing and the kill
            workers = [pid for pid, _ in children(ansible)]
            assert len(workers) >= 2
            killed_at = time.monotonic()
            kill9(ansible)
            wait_for(lambda: not writer_alive(spool), 10, "the writer's lock to be released")
            for pid in workers:
                os.kill(pid, 0)  # the orphaned workers run on, without the spool's lock
            rc = run.wait(timeout=120)
            took = time.monotonic() - killed_at
        finally:
            for pid in workers:  # each worker leads a session of its own (its module runs)
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    assert rc != 0
    assert took < 20, f"`playledger run` waited {took:.0f}s for orphaned workers"
    run_uuid = spool.name.removesuffix(SUFFIX)
    counters = stored_counters(env, run_uuid)
    assert counters == list(range(1, len(counters) + 1))
    assert len(counters) >= 6
    with opened(env) as store:
        assert store.run(run_uuid).status == "aborted"


RAW_FORK_WRITER = """
import ctypes, os, sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
import msgspec
from factories import make_run
from playledger.events import encode_record
from playledger.spool import SpoolWriter
records = make_run(8, run=sys.argv[3])[:-1]  # killed: no final record
writer = SpoolWriter(Path(sys.argv[1]), fsync="never")
writer.append(encode_record(msgspec.structs.replace(records[0], pid=os.getpid())))
for record in records[1:]:
    writer.append(encode_record(record))
libc = ctypes.CDLL(None)
child = libc.fork()  # runs no Python at-fork handler: the child keeps the writer's lock
if child == 0:
    libc.sleep(60)
    libc._exit(0)
os.write(1, f"{child}\\n".encode())
time.sleep(60)
"""


def test_follow_ends_when_the_writer_died_though_its_lock_lives_on(env: Env) -> None:
    """A forked child that kept the spool's fd keeps the flock after the writer is killed;
    the follower knows the writer's pid (RunStart says it is the followed one) and finishes."""
    run = "5f0e5f0e-0000-4000-8000-00000000f0c1"
    path = env.spool_dir / f"{run}{SUFFIX}"
    writer = subprocess.Popen(
        [PYTHON, "-c", RAW_FORK_WRITER, str(path), str(Path(__file__).parent), run],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = 0
    try:
        assert writer.stdout is not None
        child = int(writer.stdout.readline())
        writer.kill()
        writer.wait(timeout=30)
        assert writer_alive(path), "the child holds the lock (the premise)"
        started = time.monotonic()
        ship = env.playledger("ship", "--follow", run, "--pid", str(writer.pid), timeout=120)
        took = time.monotonic() - started
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if child > 0:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if writer.stdout:
            writer.stdout.close()
    assert ship.returncode == 0, ship.stderr
    assert took < 20, f"the follower waited {took:.0f}s for a lock nobody writes under"
    assert stored_counters(env, run) == list(range(1, 9))
    with opened(env) as store:
        assert store.run(run).status == "aborted"
    assert not path.exists()


HALF_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
import msgspec
from factories import make_run
from playledger.events import encode_record
from playledger.spool import SpoolWriter, frame
path = Path(sys.argv[1])
records = make_run(6, run=sys.argv[3])
writer = SpoolWriter(path, fsync="never")
writer.append(encode_record(msgspec.structs.replace(records[0], pid=os.getpid())))
for record in records[1:4]:
    writer.append(encode_record(record))
data = frame(encode_record(records[4]))
side = os.open(path, os.O_WRONLY | os.O_APPEND)
os.write(side, data[:20])  # an append caught half way
print("half", flush=True)
sys.stdin.readline()
os.write(side, data[20:])
os.close(side)
for record in records[5:]:
    writer.append(encode_record(record))
writer.close()
"""


def test_follow_with_a_pid_that_is_not_the_writer_trusts_the_lock(env: Env) -> None:
    """A dead --pid that did not write the spool must not make a live writer's half-written
    record look torn (it would be cut off, and the spool removed under the writer)."""
    run = "5f0e5f0e-0000-4000-8000-00000000f011"
    path = env.spool_dir / f"{run}{SUFFIX}"
    gone = subprocess.Popen(["true"])
    gone.wait()
    writer = subprocess.Popen(
        [PYTHON, "-c", HALF_WRITER, str(path), str(Path(__file__).parent), run],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "half"
        size = path.stat().st_size
        follower = subprocess.Popen(
            [PYTHON, "-m", "playledger", "ship", "--follow", run, "--pid", str(gone.pid)],
            env=env.vars,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: len(stored_counters(env, run)) == 3, 60, "3 events shipped")
            time.sleep(1)  # many polls with the half record in view
            assert follower.poll() is None, "still following the live writer"
        finally:
            follower.kill()
            follower.wait(timeout=30)
        assert path.stat().st_size == size, "the half record was not cut off"
        assert not (env.spool_dir / f"{run}.quarantine").exists()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        for stream in (writer.stdin, writer.stdout):
            if stream:
                stream.close()
    ship = env.playledger("ship")
    assert ship.returncode == 0, ship.stderr
    assert stored_counters(env, run) == [1, 2, 3, 4, 5, 6]
    assert env.playledger("verify", run).returncode == 0


# --- 2. torn tail ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["half-appended", "header-only", "truncated"])
def test_torn_tail_is_quarantined_and_repaired(env: Env, how: str) -> None:
    """half-appended / header-only: killed while appending event 21 (no final record);
    truncated: the final record itself is cut in half."""
    records = make_run(20)
    run = records[0].run
    if how != "truncated":
        records = records[:-1]
    path = write_spool(env.spool_dir, records)
    offsets = record_offsets(path)
    if how == "truncated":
        torn_at = offsets[-1]
        torn_len = (path.stat().st_size - torn_at) // 2
        os.truncate(path, torn_at + torn_len)
    else:
        payload = encode_record(make_run(21, run=run)[21])  # what event 21 would have been
        data = struct.pack("<4sII", b"PLR1", len(payload), zlib.crc32(payload)) + payload
        data = data[: len(data) // 2] if how == "half-appended" else data[:5]
        torn_at, torn_len = path.stat().st_size, len(data)
        with path.open("ab") as f:
            f.write(data)

    ship = env.playledger("ship")
    assert ship.returncode == 1
    assert f"at offset {torn_at} of {path}" in ship.stderr
    assert "torn tail" in ship.stderr

    quarantine = env.spool_dir / f"{run}.quarantine"
    [entry] = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert (entry["file"], entry["offset"], entry["length"]) == (str(path), torn_at, torn_len)
    assert stored_counters(env, run) == list(range(1, 21))
    assert not path.exists(), "repaired and fully shipped"
    with opened(env) as store:
        assert store.run(run).status == "aborted"

    verify = env.playledger("verify", run)
    assert verify.returncode == 1
    assert f"quarantined: torn tail (incomplete record) in {path} at offset {torn_at}" in (
        verify.stdout
    )
    again = env.playledger("ship")
    assert again.returncode == 0
    assert stored_counters(env, run) == list(range(1, 21))


# --- 3. corrupt record in the middle ---------------------------------------------------------


def test_corrupt_record_in_the_middle_is_named_and_the_rest_stored(env: Env) -> None:
    records = make_run(30)
    run = records[0].run
    path = write_spool(env.spool_dir, records)
    offsets = record_offsets(path)
    bad_at = offsets[10]  # record 10 = event 10 (record 0 is the run start)
    data = bytearray(path.read_bytes())
    data[bad_at + 12 + 30] ^= 0x01  # one bit inside the payload
    path.write_bytes(bytes(data))

    ship = env.playledger("ship")
    assert ship.returncode == 1
    assert f"corrupt record (bad frame or checksum) at offset {bad_at} of {path}" in ship.stderr

    quarantine = env.spool_dir / f"{run}.quarantine"
    [entry] = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert (entry["offset"], entry["length"]) == (bad_at, offsets[11] - bad_at)
    assert stored_counters(env, run) == [c for c in range(1, 31) if c != 10]
    with opened(env) as store:
        row = store.run(run)
        assert row.emitted == 30 and row.stored == 29

    verify = env.playledger("verify", run)
    assert verify.returncode == 1
    assert "missing counters: 10 " in verify.stdout
    assert f"quarantined: corrupt record (bad frame or checksum) in {path} at offset {bad_at}" in (
        verify.stdout
    )


def test_undecodable_record_with_valid_checksum_is_quarantined(env: Env) -> None:
    records = make_run(5)
    run = records[0].run
    path = spool_with_foreign_record(env.spool_dir, records, after=3)
    ship = env.playledger("ship")
    assert ship.returncode == 1
    assert "undecodable record" in ship.stderr
    assert stored_counters(env, run) == [1, 2, 3, 4, 5]
    verify = env.playledger("verify", run)
    assert verify.returncode == 1
    assert "quarantined: undecodable record" in verify.stdout
    assert str(path) in verify.stdout


def spool_with_foreign_record(
    spool_dir: Path, records: list[RunStart | Event | RunEnd], after: int
) -> Path:
    path = spool_dir / f"{records[0].run}{SUFFIX}"
    writer = SpoolWriter(path, fsync="never")
    for i, record in enumerate(records):
        writer.append(encode_record(record))
        if i == after:
            writer.append(b'{"kind": "event", "run": "x"}')  # framed fine, not a record
    writer.close()
    return path


# --- 4. store locked by another process ------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
print("released", flush=True)
"""

LOCK_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: before
      debug: msg=before
    - name: while the store is locked
      command: sleep 1
      loop: [1, 2, 3, 4, 5]
      changed_when: false
    - name: after
      debug: msg="{{ item }}"
      loop: "{{ range(20) | list }}"
"""


@pytest.mark.slow
def test_store_locked_for_30s_mid_run_loses_nothing(env: Env) -> None:
    env.inventory([f"node-{i}" for i in range(4)])
    env.write("site.yml", LOCK_PLAYBOOK)
    with opened(env):
        pass  # the store exists before the locker opens it
    with playledger_run(env, "site.yml", "-i", "hosts.ini", "-f", "4") as run:
        wait_for(lambda: spool_events(env) >= 8, 60, "the run to be under way")
        locker = subprocess.Popen(
            [PYTHON, "-c", LOCKER, env.db, "30"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            at_lock = spool_events(env)
            rc = run.wait(timeout=180)
            assert locker.wait(timeout=60) == 0
            assert locker.stdout.readline().strip() == "released"
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait()
            if locker.stdout:
                locker.stdout.close()
        took = time.monotonic() - locked_at
    out = (env.root / "run.out").read_text()
    assert rc == 0, out + (env.root / "run.err").read_text()
    assert took >= 25, "the run outlasted the lock: the shipper waited and retried"
    assert "complete, chain ok" in out
    with opened(env) as store:
        row = store.run("latest")
        assert row.emitted is not None and row.emitted > at_lock
        assert row.stored == row.emitted
        counters = list(store.counters(row.id))
    assert counters == list(range(1, row.emitted + 1))
    verify = env.playledger("verify", "latest")
    assert verify.returncode == 0, verify.stdout


# --- 5. shipping the same spool twice --------------------------------------------------------


def test_shipping_the_same_spool_twice_stores_once(env: Env) -> None:
    records = make_run(50)
    run = records[0].run
    path = write_spool(env.spool_dir, records)
    copy = path.read_bytes()

    first = env.playledger("ship")
    assert first.returncode == 0, first.stderr
    assert f"run {run}: 50 stored, 0 already stored" in first.stdout
    assert not path.exists()

    path.write_bytes(copy)  # the same spool again, acknowledged offset reset
    (env.spool_dir / f"{run}.ack").unlink(missing_ok=True)
    second = env.playledger("ship")
    assert second.returncode == 0, second.stderr
    assert f"run {run}: 0 stored, 50 already stored" in second.stdout
    with opened(env) as store:
        row = store.run(run)
        assert row.stored == 50 and row.emitted == 50
        assert store.count_events(row.id) == 50
        assert store.duplicate_uuids(row.id) == 0
        assert row.status == "successful"
    assert env.playledger("verify", run).returncode == 0


def test_shipping_from_a_stale_ack_is_idempotent(env: Env) -> None:
    """A crash after the commit and before the ack: the batch is shipped again, stored once."""
    records = make_run(40)
    run = records[0].run
    path = write_spool(env.spool_dir, records)
    offsets = record_offsets(path)
    (env.spool_dir / f"{run}.ack").write_text(json.dumps({"offset": offsets[25]}))
    first = env.playledger("ship")
    assert first.returncode == 0, first.stderr
    assert stored_counters(env, run) == list(range(25, 41))
    assert not path.exists()
    write_spool(env.spool_dir, records)
    second = env.playledger("ship")
    assert second.returncode == 0, second.stderr
    assert f"run {run}: 24 stored, 16 already stored" in second.stdout
    assert stored_counters(env, run) == list(range(1, 41))
    assert env.playledger("verify", run).returncode == 0


def test_different_event_under_a_stored_counter_is_not_a_duplicate(env: Env) -> None:
    run = "5f0e5f0e-0000-4000-8000-00000000c0de"
    first = make_run(10, run=run)
    write_spool(env.spool_dir, first)
    assert env.playledger("ship").returncode == 0
    second = make_run(10, run=run)  # same run id, other events (other uuids and hashes)
    path = write_spool(env.spool_dir, second)
    ship = env.playledger("ship")
    kept = path.exists() or (env.spool_dir / f"{run}.quarantine").exists()
    assert ship.returncode != 0 and kept, (
        f"exit {ship.returncode}, spool kept: {kept}: {ship.stdout}{ship.stderr}"
    )
    assert "already stored as a different event" in ship.stderr or "already started" in (
        ship.stderr
    )
    with opened(env) as store:  # the first run is untouched
        row = store.run(run)
        assert row.stored == 10 and [e.uuid for e in store.events(row.id)] == [
            e.uuid for e in first if isinstance(e, Event)
        ]


# --- 6. shipper killed mid-batch -------------------------------------------------------------


@pytest.mark.slow
def test_shipper_killed_9_mid_batch_then_shipped_again(env: Env) -> None:
    n = 200_000
    records = make_run(n, hosts=50)
    run = records[0].run
    path = write_spool(env.spool_dir, records)
    del records
    ack = env.spool_dir / f"{run}.ack"

    def committed() -> int:
        if not Path(env.db).exists():
            return 0
        conn = sqlite3.connect(f"file:{env.db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # schema not there yet
        finally:
            conn.close()

    shipper = subprocess.Popen(
        [PYTHON, "-m", "playledger", "ship"],
        env=env.vars,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: ack.exists() and committed() >= 10_000, 120, "some committed batches")
    finally:
        shipper.send_signal(signal.SIGKILL)
        shipper.wait(timeout=30)
    partly = committed()
    assert 0 < partly < n, "killed mid-way"
    assert path.exists()

    again = env.playledger("ship", timeout=600)
    assert again.returncode == 0, again.stderr
    m = re.search(rf"run {run}: ([\d,]+) stored, ([\d,]+) already stored", again.stdout)
    assert m, again.stdout
    inserted, duplicates = (int(g.replace(",", "")) for g in m.groups())
    assert inserted + partly == n
    with opened(env) as store:
        row = store.run(run)
        assert row.stored == n and row.emitted == n
        assert store.count_events(row.id) == n
    assert committed() == n
    assert stored_counters(env, run) == list(range(1, n + 1))
    verify = env.playledger("verify", run, timeout=600)
    assert verify.returncode == 0, verify.stdout
    assert duplicates >= 0


# --- 7. bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["show", "no-such-run"],
        ["hosts", "424242"],
        ["events", "no-such-run"],
        ["export", "no-such-run"],
        ["verify", "no-such-run"],
        ["verify", "latest"],
    ],
)
def test_unknown_run_is_one_line_and_exit_2(env: Env, args: list[str]) -> None:
    proc = env.playledger(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("playledger: error: ")
    assert "no run" in lines[0]


@pytest.mark.parametrize("where", ["under-a-file", "is-a-file"])
def test_unwritable_spool_dir_refuses_before_ansible_starts(env: Env, where: str) -> None:
    blocker = env.root / "blocker"
    blocker.write_text("a regular file\n")
    spool_dir = blocker / "spool" if where == "under-a-file" else blocker
    env.vars["PLAYLEDGER_SPOOL_DIR"] = str(spool_dir)
    env.inventory(["node-0"])
    env.write("site.yml", LONG_PLAYBOOK)
    proc = env.playledger("run", "site.yml", "-i", "hosts.ini", timeout=60)
    assert proc.returncode != 0
    assert "PLAY [" not in proc.stdout and "TASK [" not in proc.stdout
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"spool folder {spool_dir} is not writable" in lines[0]
    assert not Path(env.vars["ANSIBLE_LOCAL_TEMP"]).exists(), "Ansible never started"
    with opened(env) as store:
        assert store.runs() == []


def test_store_locked_when_marking_aborted_is_retried(env: Env) -> None:
    """Everything is stored and acknowledged; only the 'aborted' mark is left to do (a shipper
    died just before it) when another process holds the write lock for a few seconds."""
    records = make_run(10)[:-1]  # no final record
    run = records[0].run
    with opened(env) as store:
        store.ingest(records)
    path = write_spool(env.spool_dir, records)
    (env.spool_dir / f"{run}.ack").write_text(json.dumps({"offset": path.stat().st_size}))
    env.vars["PLAYLEDGER_BUSY_TIMEOUT"] = "0.5"
    locker = subprocess.Popen(
        [PYTHON, "-c", LOCKER, env.db, "4"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        ship = env.playledger("ship", "--timeout", "30", timeout=60)
    finally:
        locker.wait(timeout=30)
        if locker.stdout:
            locker.stdout.close()
    assert "Traceback" not in ship.stderr, ship.stderr
    assert ship.returncode == 0, ship.stderr
    with opened(env) as store:
        assert store.run(run).status == "aborted"
    assert not path.exists()
