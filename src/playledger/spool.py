"""Append-only per-run spool: framing, checksums, fsync policy, acknowledged offset, recovery.

File layout in the spool folder, one run each:
  <run>.spool       records: MAGIC | length (u32 LE) | crc32 (u32 LE) | payload (JSON)
  <run>.ack         the offset up to which the store has committed (small state file)
  <run>.quarantine  corrupt or torn records moved aside (JSON lines naming file and offset)
  <run>.lock        held by the one shipper draining this spool

The writer (the callback, inside ansible-playbook) holds an exclusive flock on the .spool file
for its whole life, so a reader can tell a live writer (incomplete tail = not written yet) from
a dead one (incomplete tail = torn by a crash, repaired on the next open).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import struct
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from playledger.errors import SpoolError
from playledger.settings import FSYNC_POLICIES

MAGIC = b"PLR1"
HEADER = struct.Struct("<4sII")
MAX_RECORD = 1 << 30  # a length beyond this is corruption, not a record
SUFFIX = ".spool"


def _fsync_dir(path: Path) -> None:
    """fsync the folder so a created, renamed or deleted entry survives power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def check_writable(spool_dir: Path) -> None:
    """Raise SpoolError unless records can be created in `spool_dir` (checked before a run)."""
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        probe = spool_dir / f".probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink()
    except OSError as exc:
        raise SpoolError(f"spool folder {spool_dir} is not writable: {exc.strerror}") from exc


class SpoolWriter:
    """Appends framed records for one run. Not thread-safe: the caller serialises appends."""

    def __init__(
        self,
        path: Path,
        fsync: str = "interval",
        fsync_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._policy = fsync
        self._interval = fsync_interval
        self._clock = clock
        if fsync not in FSYNC_POLICIES:  # a typo must not quietly mean "never fsync"
            raise SpoolError(f"unknown fsync policy {fsync!r}: use {', '.join(FSYNC_POLICIES)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            raise SpoolError(f"{path} exists: a run's spool is never reused")
        # Created and locked under a temporary name, then renamed: a reader never sees the
        # spool's real name without the writer's lock on it (it would think the run is over).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
        self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            # link, not rename: a rename would silently replace a spool another writer of the
            # same run id created since the check above, and its records would be gone.
            os.link(tmp, path)
        except FileExistsError:
            os.unlink(tmp)
            os.close(self._fd)
            raise SpoolError(f"{path} exists: a run's spool is never reused") from None
        except OSError:
            os.rename(tmp, path)  # a file system without hard links: no better than rename
        else:
            os.unlink(tmp)
        _fsync_dir(path.parent)  # the new file's name survives a power loss
        self._size = 0
        self._last_sync = clock()
        self._dirty = False
        os.register_at_fork(after_in_child=_in_forked_child(weakref.ref(self)))

    def _forked(self) -> None:
        """In a forked child (an Ansible worker): drop the inherited fd without unlocking.

        The flock belongs to the open file shared with the parent; while any child keeps the
        fd, the lock outlives a killed writer and readers would wait for orphaned workers.
        Closed here, the lock ends with the writer process, and a child can never append.
        """
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def append(self, payload: bytes) -> None:
        if self._fd < 0:
            raise SpoolError(f"{self.path}: writer closed, or inherited by a forked process")
        data = frame(payload)
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            # Leave no half record behind: the next append must start on a frame boundary.
            os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self._dirty = True
        if self._policy == "always" or (
            self._policy == "interval" and self._clock() - self._last_sync >= self._interval
        ):
            self.sync()

    def sync(self) -> None:
        """fsync protects the appended records against power loss (not needed for a crash)."""
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = self._clock()

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            if self._policy != "never":
                self.sync()
        finally:
            os.close(self._fd)  # also releases the flock
            self._fd = -1


def _in_forked_child(ref: weakref.ref[SpoolWriter]) -> Callable[[], None]:
    def forked() -> None:
        writer = ref()
        if writer is not None:
            writer._forked()

    return forked


@dataclass
class Bad:
    """A byte range that is not a valid record: corrupt (mid-file) or torn (at the tail)."""

    offset: int
    length: int
    reason: str


@dataclass
class Chunk:
    records: list[tuple[int, bytes]] = field(default_factory=list)  # (end offset, payload)
    bad: list[Bad] = field(default_factory=list)
    end: int = 0  # offset after the last byte accounted for (records and bad ranges)


def writer_alive(path: Path) -> bool:
    """True while some process holds the writer's flock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


def _valid_at(buf: bytes, pos: int) -> int:
    """Length of a complete, checksummed record at `pos`, or -1."""
    if pos + HEADER.size > len(buf):
        return -1
    magic, length, crc = HEADER.unpack_from(buf, pos)
    length = int(length)
    if magic != MAGIC or length > MAX_RECORD:
        return -1
    start = pos + HEADER.size
    if start + length > len(buf) or zlib.crc32(buf[start : start + length]) != crc:
        return -1
    return HEADER.size + length


def _incomplete_at(buf: bytes, pos: int) -> bool:
    """True if the bytes at `pos` are the start of a record that continues past the buffer."""
    if pos + HEADER.size > len(buf):
        return MAGIC.startswith(buf[pos : pos + len(MAGIC)])
    magic, length, _ = HEADER.unpack_from(buf, pos)
    return bool(magic == MAGIC and length <= MAX_RECORD and pos + HEADER.size + length > len(buf))


def parse(buf: bytes, base: int, final: bool, max_records: int) -> Chunk:
    """Split `buf` (file bytes from offset `base`) into records and bad ranges.

    With `final` (no live writer, nothing after `buf`) every byte is accounted for: an incomplete
    or invalid tail is reported as torn. Without it an incomplete tail is left alone: the writer
    is still on it (or the caller read only part of the file).
    """
    chunk = Chunk(end=base)
    pos = 0
    size = len(buf)
    while pos < size and len(chunk.records) < max_records:
        n = _valid_at(buf, pos)
        if n > 0:
            chunk.records.append((base + pos + n, buf[pos + HEADER.size : pos + n]))
            pos += n
            continue
        if not final and _incomplete_at(buf, pos):
            break
        # Resynchronise: the next offset where a whole valid record starts (or, without
        # `final`, where one may start and continue past the buffer).
        nxt = buf.find(MAGIC, pos + 1)
        while nxt != -1 and _valid_at(buf, nxt) < 0 and (final or not _incomplete_at(buf, nxt)):
            nxt = buf.find(MAGIC, nxt + 1)
        if nxt == -1 and not final:
            # No record can start before the last len(MAGIC)-1 bytes (a MAGIC cut by the end
            # of the buffer): report what is certainly bad now, so that a corrupt range
            # larger than one read still makes progress.
            nxt = size - (len(MAGIC) - 1)
            if nxt <= pos:
                break
        if nxt == -1:
            chunk.bad.append(Bad(base + pos, size - pos, "torn tail (incomplete record)"))
            pos = size
        else:
            chunk.bad.append(Bad(base + pos, nxt - pos, "corrupt record (bad frame or checksum)"))
            pos = nxt
    chunk.end = base + pos
    return chunk


@dataclass
class SpoolFile:
    """Reader-side view of one run's spool files."""

    spool_dir: Path
    run: str

    @property
    def path(self) -> Path:
        return self.spool_dir / f"{self.run}{SUFFIX}"

    @property
    def ack_path(self) -> Path:
        return self.spool_dir / f"{self.run}.ack"

    @property
    def quarantine_path(self) -> Path:
        return self.spool_dir / f"{self.run}.quarantine"

    @property
    def lock_path(self) -> Path:
        return self.spool_dir / f"{self.run}.lock"

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def acked(self) -> int:
        try:
            offset: int = json.loads(self.ack_path.read_bytes())["offset"]
            return int(offset)
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{self.ack_path}: unreadable acknowledged offset: {exc}") from exc

    def set_acked(self, offset: int) -> None:
        """Durably record that everything before `offset` is committed in the store.

        Temp file + fsync + rename + fsync of the folder: after a crash the old or the new
        offset is there, never a torn one. An old offset only means re-shipping (idempotent).
        """
        tmp = self.ack_path.with_suffix(".ack.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"offset": offset}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.ack_path)
        _fsync_dir(self.spool_dir)

    def read(self, offset: int, final: bool, max_records: int, max_bytes: int = 8 << 20) -> Chunk:
        """Records from `offset`: at most `max_records`, about `max_bytes` (more for a big one)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return Chunk(end=offset)
        try:
            if not final:
                # A reader's fsync flushes the live writer's pages too: the shipper makes the
                # spool durable even when the writer is idle between interval fsyncs.
                os.fsync(fd)
            buf = os.pread(fd, max_bytes, offset)
            chunk = parse(buf, offset, final and len(buf) < max_bytes, max_records)
            if not chunk.records and not chunk.bad and len(buf) == max_bytes:
                # A single record larger than max_bytes: read exactly what it needs.
                magic, length, _ = HEADER.unpack_from(buf, 0)
                if magic == MAGIC and length <= MAX_RECORD:
                    buf = os.pread(fd, HEADER.size + length, offset)
                    chunk = parse(buf, offset, final, max_records)
            return chunk
        finally:
            os.close(fd)

    def quarantine(self, bad: Bad) -> None:
        """Copy a bad byte range aside (fsynced) before the offset moves past it."""
        with open(self.path, "rb") as src:
            src.seek(bad.offset)
            data = src.read(bad.length)
        line = json.dumps(
            {
                "file": str(self.path),
                "offset": bad.offset,
                "length": bad.length,
                "reason": bad.reason,
                "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "data_b64": base64.b64encode(data).decode(),
            }
        )
        fd = os.open(self.quarantine_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate_torn(self, offset: int) -> None:
        """Repair a dead writer's torn tail (after quarantining it) so appends stay framed."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def quarantined(self) -> list[dict[str, object]]:
        try:
            text = self.quarantine_path.read_text()
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                # A torn quarantine line is itself reported, never skipped.
                entry = {"file": str(self.quarantine_path), "reason": "unreadable entry"}
            entry.pop("data_b64", None)
            entries.append(entry)
        return entries

    def remove(self) -> None:
        """Delete a fully acknowledged spool (the quarantine file stays for inspection)."""
        for path in (self.path, self.ack_path):
            path.unlink(missing_ok=True)
        _fsync_dir(self.spool_dir)
        self.lock_path.unlink(missing_ok=True)

    def backlog(self) -> tuple[int, int]:
        """(records, bytes) written but not yet acknowledged. Records are counted the way the
        shipper reads them: checksums checked, a corrupt range skipped (and not counted), the
        records after it counted; a tail still being written is not a record yet."""
        acked = self.acked()
        size = self.size()
        records, pos = 0, acked
        while pos < size:
            chunk = self.read(pos, final=False, max_records=1 << 30)
            records += len(chunk.records)
            if chunk.end <= pos:
                break  # only an incomplete tail is left
            pos = chunk.end
        return records, max(size - acked, 0)


def list_runs(spool_dir: Path) -> Iterator[str]:
    """Run ids with a spool or a quarantine file in `spool_dir`."""
    if not spool_dir.is_dir():
        return
    seen = set()
    for path in sorted(spool_dir.iterdir()):
        if path.suffix in (SUFFIX, ".quarantine") and path.stem not in seen:
            seen.add(path.stem)
            yield path.stem


def decode_error(exc: msgspec.DecodeError | msgspec.ValidationError) -> str:
    return f"undecodable record: {exc}"
