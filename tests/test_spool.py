"""Unit tests of the spool: framing, checksums, parsing of torn and corrupt data, the acked
offset, fsync policies, the writer's lock and the backlog. Real files in tmp_path."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from playledger.errors import SpoolError
from playledger.spool import (
    HEADER,
    MAGIC,
    SUFFIX,
    Bad,
    Chunk,
    SpoolFile,
    SpoolWriter,
    check_writable,
    frame,
    list_runs,
    parse,
    writer_alive,
)

RUN = "0b5a5c1e-0000-4000-8000-000000000001"


def payloads(n: int, size: int = 40) -> list[bytes]:
    return [json.dumps({"n": i, "pad": "x" * (size + i % 7)}).encode() for i in range(n)]


def framed(items: list[bytes]) -> tuple[bytes, list[int]]:
    """The bytes of `items` framed back to back, and each record's start offset."""
    starts: list[int] = []
    buf = b""
    for p in items:
        starts.append(len(buf))
        buf += frame(p)
    return buf, starts


def assert_tiled(chunk: Chunk, base: int) -> None:
    """Records and bad ranges cover [base, chunk.end) exactly: no byte is skipped."""
    spans = [(end - len(p) - HEADER.size, end) for end, p in chunk.records]
    spans += [(b.offset, b.offset + b.length) for b in chunk.bad]
    pos = base
    for start, end in sorted(spans):
        assert start == pos, f"bytes {pos}..{start} are neither a record nor reported bad"
        pos = end
    assert pos == chunk.end


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def written(spool_dir: Path) -> Iterator[tuple[SpoolFile, list[bytes]]]:
    """A closed spool of 10 records written by the real writer."""
    items = payloads(10)
    writer = SpoolWriter(spool_dir / f"{RUN}{SUFFIX}", fsync="always")
    for p in items:
        writer.append(p)
    writer.close()
    yield SpoolFile(spool_dir, RUN), items


# --- framing and checksums -------------------------------------------------------------------


def test_frame_layout_is_magic_length_crc_payload() -> None:
    payload = b'{"kind":"event"}'
    data = frame(payload)
    assert data[:4] == MAGIC
    assert struct.unpack("<I", data[4:8])[0] == len(payload)
    assert struct.unpack("<I", data[8:12])[0] == zlib.crc32(payload)
    assert data[HEADER.size :] == payload
    assert len(data) == HEADER.size + len(payload)


def test_writer_output_parses_back_with_end_offsets(
    written: tuple[SpoolFile, list[bytes]],
) -> None:
    spool, items = written
    buf = spool.path.read_bytes()
    chunk = parse(buf, 0, final=True, max_records=100)
    assert [p for _, p in chunk.records] == items
    assert not chunk.bad
    assert chunk.end == len(buf)
    _, starts = framed(items)
    assert [end for end, _ in chunk.records] == [*starts[1:], len(buf)]


def test_parse_adds_base_offset_and_respects_max_records() -> None:
    items = payloads(5)
    buf, starts = framed(items)
    chunk = parse(buf[starts[2] :], 1000 + starts[2], final=True, max_records=2)
    assert [p for _, p in chunk.records] == items[2:4]
    assert chunk.end == 1000 + starts[4]
    assert not chunk.bad


def test_empty_payload_is_a_valid_frame() -> None:
    chunk = parse(frame(b""), 0, final=True, max_records=10)
    assert chunk.records == [(HEADER.size, b"")]


# --- torn tails ------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 3, 4, 8, HEADER.size, HEADER.size + 5])
def test_torn_tail_waits_for_live_writer_and_is_reported_when_final(keep: int) -> None:
    items = payloads(4)
    buf, starts = framed(items)
    torn = buf[: starts[3] + keep]

    live = parse(torn, 0, final=False, max_records=100)
    assert [p for _, p in live.records] == items[:3]
    assert not live.bad, "a live writer's unfinished record is not torn"
    assert live.end == starts[3]

    dead = parse(torn, 0, final=True, max_records=100)
    assert [p for _, p in dead.records] == items[:3]
    assert dead.bad == [Bad(starts[3], keep, "torn tail (incomplete record)")]
    assert dead.end == len(torn)
    assert_tiled(live, 0)
    assert_tiled(dead, 0)


def test_complete_record_with_bad_checksum_at_tail_is_bad_even_for_live_writer() -> None:
    items = payloads(3)
    buf, starts = framed(items)
    broken = bytearray(buf)
    broken[-2] ^= 0xFF
    for final in (False, True):
        chunk = parse(bytes(broken), 0, final=final, max_records=100)
        assert [p for _, p in chunk.records] == items[:2]
        assert_tiled(chunk, 0)
        if final:
            assert [(b.offset, b.length) for b in chunk.bad] == [(starts[2], len(buf) - starts[2])]
        else:
            # Nothing after it yet: reported up to where a next record could begin.
            assert chunk.bad[0].offset == starts[2]
            assert len(buf) - chunk.end < len(MAGIC)


# --- corrupt records in the middle ----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "delta"),
    [
        ("magic", 0),
        ("length-up", 5),
        ("length-down", 6),
        ("crc", 9),
        ("payload", HEADER.size + 3),
    ],
)
@pytest.mark.parametrize("final", [False, True])
def test_corrupt_record_in_the_middle_is_isolated(where: str, delta: int, final: bool) -> None:
    items = payloads(6)
    buf, starts = framed(items)
    broken = bytearray(buf)
    if where == "length-up":
        struct.pack_into("<I", broken, starts[2] + 4, len(items[2]) + 10)
    elif where == "length-down":
        struct.pack_into("<I", broken, starts[2] + 4, len(items[2]) - 10)
    else:
        broken[starts[2] + delta] ^= 0x5A
    chunk = parse(bytes(broken), 0, final=final, max_records=100)
    assert [p for _, p in chunk.records] == items[:2] + items[3:]
    assert [(b.offset, b.length) for b in chunk.bad] == [(starts[2], starts[3] - starts[2])]
    assert chunk.bad[0].reason.startswith("corrupt record")
    assert chunk.end == len(buf)
    assert_tiled(chunk, 0)


def test_garbage_between_records_is_quarantined_not_skipped() -> None:
    items = payloads(3)
    a, _ = framed(items[:1])
    b, _ = framed(items[1:])
    garbage = b"\x00" * 100 + MAGIC + b"\xff" * 20
    buf = a + garbage + b
    chunk = parse(buf, 0, final=True, max_records=100)
    assert [p for _, p in chunk.records] == items
    assert [(x.offset, x.length) for x in chunk.bad] == [(len(a), len(garbage))]


def test_zeroed_tail_after_crash_is_torn() -> None:
    items = payloads(3)
    buf, _ = framed(items)
    chunk = parse(buf + b"\x00" * 4096, 0, final=True, max_records=100)
    assert [p for _, p in chunk.records] == items
    assert [(x.offset, x.length) for x in chunk.bad] == [(len(buf), 4096)]


# --- reading files ---------------------------------------------------------------------------


def test_read_from_offset_and_record_larger_than_max_bytes(spool_dir: Path) -> None:
    items = [b"a" * 50, b"b" * 5000, b"c" * 50]
    writer = SpoolWriter(spool_dir / f"{RUN}{SUFFIX}", fsync="never")
    for p in items:
        writer.append(p)
    writer.close()
    spool = SpoolFile(spool_dir, RUN)
    _, starts = framed(items)
    chunk = spool.read(starts[1], final=True, max_records=10, max_bytes=1024)
    assert [p for _, p in chunk.records] == [items[1]]
    rest = spool.read(chunk.end, final=True, max_records=10, max_bytes=1024)
    assert [p for _, p in rest.records] == [items[2]]
    assert rest.end == spool.size()


def test_read_makes_progress_through_garbage_larger_than_max_bytes(spool_dir: Path) -> None:
    """Bytes that can never become a record are reported even when they fill a whole read."""
    items = payloads(3)
    a, _ = framed(items[:1])
    b, _ = framed(items[1:])
    spool_dir.mkdir()
    path = spool_dir / f"{RUN}{SUFFIX}"
    path.write_bytes(a + bytes(range(256)) * 40 + b)  # 10 KiB without a valid record
    spool = SpoolFile(spool_dir, RUN)
    for final in (True, False):
        got: list[bytes] = []
        bad: list[Bad] = []
        offset = 0
        for _ in range(100):
            chunk = spool.read(offset, final=final, max_records=10, max_bytes=1024)
            got += [p for _, p in chunk.records]
            bad += chunk.bad
            if chunk.end == offset:
                break
            offset = chunk.end
        assert got == items, f"final={final}"
        assert offset == spool.size()
        assert bad[0].offset == len(a)
        assert bad[-1].offset + bad[-1].length == len(a) + 10240
        assert sum(x.length for x in bad) == spool.size() - len(a) - len(b)


def test_read_of_missing_spool_is_empty(spool_dir: Path) -> None:
    chunk = SpoolFile(spool_dir, RUN).read(7, final=True, max_records=10)
    assert chunk.records == [] and chunk.bad == [] and chunk.end == 7


# --- acknowledged offset, quarantine, repair --------------------------------------------------


def test_acked_offset_round_trips_durably(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, _ = written
    assert spool.acked() == 0
    spool.set_acked(123)
    assert spool.acked() == 123
    spool.set_acked(456)
    assert spool.acked() == 456
    assert not list(spool.spool_dir.glob("*.tmp")), "the temp file was renamed into place"


def test_unreadable_ack_is_an_error_not_zero(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, _ = written
    spool.ack_path.write_text("{not json")
    with pytest.raises(SpoolError, match=r"\.ack"):
        spool.acked()


def test_quarantine_names_file_offset_and_keeps_bytes(
    written: tuple[SpoolFile, list[bytes]],
) -> None:
    spool, items = written
    _, starts = framed(items)
    bad = Bad(starts[4], starts[5] - starts[4], "corrupt record (bad frame or checksum)")
    spool.quarantine(bad)
    raw = json.loads(spool.quarantine_path.read_text())
    import base64

    assert base64.b64decode(raw["data_b64"]) == frame(items[4])
    [entry] = spool.quarantined()
    assert entry["file"] == str(spool.path)
    assert entry["offset"] == starts[4]
    assert entry["length"] == bad.length
    assert entry["reason"] == bad.reason
    assert "data_b64" not in entry


def test_torn_quarantine_line_is_reported(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, _ = written
    spool.quarantine(Bad(0, 4, "corrupt record (bad frame or checksum)"))
    with spool.quarantine_path.open("a") as f:
        f.write('{"file": "x", "off')
    entries = spool.quarantined()
    assert len(entries) == 2
    assert entries[1]["reason"] == "unreadable entry"


def test_truncate_torn_repairs_the_frame_boundary(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, items = written
    whole = spool.size()
    with spool.path.open("ab") as f:
        f.write(frame(b'{"half": true}')[:9])
    spool.truncate_torn(whole)
    assert spool.size() == whole
    chunk = parse(spool.path.read_bytes(), 0, final=True, max_records=100)
    assert [p for _, p in chunk.records] == items and not chunk.bad


def test_backlog_counts_records_after_the_ack(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, items = written
    _, starts = framed(items)
    assert spool.backlog() == (10, spool.size())
    spool.set_acked(starts[7])
    assert spool.backlog() == (3, spool.size() - starts[7])
    spool.set_acked(spool.size())
    assert spool.backlog() == (0, 0)
    assert SpoolFile(spool.spool_dir, "no-such-run").backlog() == (0, 0)


def test_backlog_counts_past_a_corrupt_record_but_not_it_nor_a_torn_tail(
    written: tuple[SpoolFile, list[bytes]],
) -> None:
    spool, items = written
    _, starts = framed(items)
    data = bytearray(spool.path.read_bytes())
    data[starts[4] + HEADER.size + 1] ^= 0xFF  # record 5's payload: its checksum fails
    spool.path.write_bytes(bytes(data))
    with spool.path.open("ab") as f:
        f.write(frame(b'{"half": true}')[:9])  # a writer in the middle of a record
    assert spool.backlog() == (9, spool.size())  # the shipper would store these nine


def test_remove_keeps_quarantine_and_list_runs_sees_it(
    written: tuple[SpoolFile, list[bytes]],
) -> None:
    spool, _ = written
    other = SpoolWriter(spool.spool_dir / f"other{SUFFIX}", fsync="never")
    other.close()
    assert list(list_runs(spool.spool_dir)) == [RUN, "other"]
    spool.quarantine(Bad(0, 4, "corrupt record (bad frame or checksum)"))
    spool.set_acked(spool.size())
    spool.remove()
    assert not spool.path.exists() and not spool.ack_path.exists()
    assert spool.quarantine_path.exists()
    assert list(list_runs(spool.spool_dir)) == [RUN, "other"]
    assert list(list_runs(spool.spool_dir / "missing")) == []


# --- writer ----------------------------------------------------------------------------------


def test_writer_never_reuses_a_spool(written: tuple[SpoolFile, list[bytes]]) -> None:
    spool, _ = written
    with pytest.raises(SpoolError, match="never reused"):
        SpoolWriter(spool.path)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies_are_accepted(
    policy: str, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    now = [0.0]
    writer = SpoolWriter(
        spool_dir / f"{RUN}{SUFFIX}", fsync=policy, fsync_interval=1.0, clock=lambda: now[0]
    )
    monkeypatch.setattr(os, "fsync", counting_fsync)
    for i in range(10):
        now[0] = i * 0.25  # 10 appends over 2.25 s
        writer.append(b"{}")
    appended = len(synced)
    writer.close()
    assert appended == {"always": 10, "interval": 2, "never": 0}[policy]
    assert len(synced) - appended == (0 if policy in ("never", "always") else 1)
    chunk = parse((spool_dir / f"{RUN}{SUFFIX}").read_bytes(), 0, final=True, max_records=99)
    assert len(chunk.records) == 10


def test_unknown_fsync_policy_is_refused(spool_dir: Path) -> None:
    with pytest.raises(SpoolError, match="fsync"):
        SpoolWriter(spool_dir / f"{RUN}{SUFFIX}", fsync="alwyas")
    assert not list(spool_dir.glob("*")), "nothing is created for a refused policy"


def test_writer_alive_follows_the_lock(spool_dir: Path) -> None:
    path = spool_dir / f"{RUN}{SUFFIX}"
    assert not writer_alive(path)
    writer = SpoolWriter(path, fsync="never")
    assert writer_alive(path)
    assert not list(spool_dir.glob(".*.new")), "the temp name is gone after the rename"
    writer.append(b"{}")
    writer.close()
    assert not writer_alive(path)


WRITER_SCRIPT = """
import sys, time
from pathlib import Path
from playledger.spool import SpoolWriter
w = SpoolWriter(Path(sys.argv[1]), fsync="never")
w.append(b'{"hello": 1}')
print("ready", flush=True)
time.sleep(60)
"""


def test_writer_killed_9_releases_the_lock(spool_dir: Path) -> None:
    path = spool_dir / f"{RUN}{SUFFIX}"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert writer_alive(path)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
    deadline = time.monotonic() + 5
    while writer_alive(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not writer_alive(path)
    chunk = parse(path.read_bytes(), 0, final=True, max_records=10)
    assert [p for _, p in chunk.records] == [b'{"hello": 1}']


FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
from playledger.spool import SpoolWriter, frame
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
record = b'{"pad": "' + b"y" * 300 + b'"}'
limit = 2 * len(frame(record)) + 100  # the third record only half fits
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
w = SpoolWriter(Path(sys.argv[1]), fsync="always")
failed = 0
for _ in range(4):
    try:
        w.append(record)
    except OSError:
        failed += 1
w.close()
print(failed)
"""


def test_failed_append_leaves_no_half_record(spool_dir: Path) -> None:
    """A write cut short (file size limit, like a full disk) is rolled back to a frame boundary."""
    path = spool_dir / f"{RUN}{SUFFIX}"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "2"
    buf = path.read_bytes()
    chunk = parse(buf, 0, final=True, max_records=10)
    assert len(chunk.records) == 2
    assert not chunk.bad
    assert chunk.end == len(buf)


def test_check_writable_refuses_a_folder_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError, match="not writable"):
        check_writable(blocker / "spool")
    check_writable(tmp_path / "ok" / "spool")
    assert not list((tmp_path / "ok" / "spool").iterdir()), "the probe is cleaned up"


@pytest.mark.parametrize("seed", range(40))
def test_random_damage_keeps_every_intact_record(seed: int, spool_dir: Path) -> None:
    """Flip, cut or splice bytes at random: every untouched record is read back, in order,
    and every other byte is reported bad, whether read whole or in small pieces."""
    import random

    rng = random.Random(seed)
    items = [json.dumps({"n": i, "pad": "z" * rng.randrange(0, 300)}).encode() for i in range(30)]
    buf, starts = framed(items)
    spans = list(zip(starts, [*starts[1:], len(buf)], strict=True))
    data = bytearray(buf)
    touched: set[int] = set()
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(items) - 1)  # the last record stays whole unless cut below
        start, end = spans[i]
        kind = rng.choice(["flip", "garbage"])
        if kind == "flip":
            data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(start, end - 8)
            data[at : at + 8] = bytes(rng.randrange(256) for _ in range(8))
        touched.add(i)
    cut = rng.random() < 0.5
    if cut:
        start, end = spans[-1]
        del data[rng.randrange(start + 1, end) :]
        touched.add(len(items) - 1)
    expected = [p for i, p in enumerate(items) if i not in touched]

    whole = parse(bytes(data), 0, final=True, max_records=1000)
    assert_tiled(whole, 0)
    assert whole.end == len(data)
    assert [p for _, p in whole.records] == expected

    spool_dir.mkdir()
    (spool_dir / f"{RUN}{SUFFIX}").write_bytes(bytes(data))
    spool = SpoolFile(spool_dir, RUN)
    for final in (False, True):
        got: list[bytes] = []
        offset = 0
        for _ in range(10_000):
            chunk = spool.read(offset, final=final, max_records=7, max_bytes=700)
            assert_tiled(chunk, offset)
            got += [p for _, p in chunk.records]
            if chunk.end == offset:
                break
            offset = chunk.end
        assert got == expected
        if final:
            assert offset == len(data)
        else:
            assert len(data) - offset <= max(len(items[-1]) + HEADER.size, len(MAGIC))


def test_writer_never_replaces_a_spool_created_behind_its_back(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers racing for one run id: the second fails, the first keeps its records."""
    path = spool_dir / f"{RUN}{SUFFIX}"
    first = SpoolWriter(path, fsync="never")
    first.append(b'{"first": 1}')
    monkeypatch.setattr(Path, "exists", lambda self: False)  # lose the race to the check
    with pytest.raises(SpoolError, match="never reused"):
        SpoolWriter(path, fsync="never")
    monkeypatch.undo()
    first.append(b'{"first": 2}')
    first.close()
    chunk = parse(path.read_bytes(), 0, final=True, max_records=10)
    assert [p for _, p in chunk.records] == [b'{"first": 1}', b'{"first": 2}']
    assert sorted(p.name for p in spool_dir.iterdir()) == [path.name], "no temp file left"


FORKING_WRITER = """
import os, sys, time
from pathlib import Path
from playledger.errors import SpoolError
from playledger.spool import SpoolWriter
w = SpoolWriter(Path(sys.argv[1]), fsync="never")
w.append(b'{"parent": 1}')
child = os.fork()  # what Ansible does for every worker
if child == 0:
    try:
        w.append(b'{"child": 1}')
        os.write(1, b"appended\\n")  # one write each: lines from two processes never mix
    except SpoolError:
        os.write(1, b"refused\\n")
    time.sleep(60)
    os._exit(0)
os.write(1, f"child {child}\\n".encode())
time.sleep(60)
"""


def test_forked_child_neither_holds_the_lock_nor_appends(spool_dir: Path) -> None:
    """kill -9 of the writer releases its lock at once, though a forked child lives on."""
    path = spool_dir / f"{RUN}{SUFFIX}"
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKING_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    child = 0
    try:
        assert proc.stdout is not None
        lines = {proc.stdout.readline().strip() for _ in range(2)}
        child = next(int(line.split()[1]) for line in lines if line.startswith("child "))
        assert "refused" in lines, lines
        assert writer_alive(path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while writer_alive(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child, 0)  # the child is still there...
        assert not writer_alive(path), "...but the lock ended with the writer"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        if proc.stdout:
            proc.stdout.close()
    chunk = parse(path.read_bytes(), 0, final=True, max_records=10)
    assert [p for _, p in chunk.records] == [b'{"parent": 1}']
    assert not chunk.bad
