"""What the NATS sink and `playledger worker` share: subjects, the message format, the control
requests, and the stream and consumer definitions (`playledger streams init`).

One message = one shipper batch of one run: a JSON array of records (zstd-compressed above
1 kB) on `<prefix>.events.<run>`, with a `Nats-Msg-Id` derived from its content, so a batch
published again (a shipper retry, a restart) is dropped by JetStream's duplicate window; the
store ignores whatever gets past that. Imported only by the NATS sink, the worker and the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
import zstandard
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from playledger.errors import StoreError, UsageError
from playledger.events import Event, Record, RunStart

ENCODING_HEADER = "Playledger-Encoding"
ERROR_HEADER = "Playledger-Error"
COMPRESS_ABOVE = 1024  # bytes of JSON; smaller bodies go as they are
HEADER_ROOM = 1024  # bytes of max_payload left for headers
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_zstd_c = zstandard.ZstdCompressor(level=3)
_zstd_d = zstandard.ZstdDecompressor()
T = TypeVar("T")
log = logging.getLogger("playledger.streams")


@dataclass(frozen=True)
class Subjects:
    prefix: str

    @property
    def events(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead.>"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control.*"

    def events_of(self, run: str) -> str:
        return f"{self.prefix}.events.{run_token(run)}"

    def dead_of(self, run: str) -> str:
        return f"{self.prefix}.dead.{run_token(run)}"

    def control_op(self, op: str) -> str:
        return f"{self.prefix}.control.{op}"


def run_token(run: str) -> str:
    """The run as one subject token: the uuid itself, or a digest of an unusual run id."""
    if _SAFE_TOKEN.fullmatch(run):
        return run
    return "h" + hashlib.blake2b(run.encode(), digest_size=16).hexdigest()


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One message to publish: some of one run's records (`indexes` in the shipper's batch)."""

    run: str
    indexes: tuple[int, ...]
    body: bytes
    headers: dict[str, str]
    events: int
    last_event: Event | None


def _key(record: Record) -> str:
    if isinstance(record, Event):
        return str(record.counter)
    return "start" if isinstance(record, RunStart) else "end"


def build_part(
    run: str, records: Sequence[Record], encoded: Sequence[bytes], indexes: Sequence[int]
) -> Part:
    """The message for `records` (all of one run); `encoded` holds their JSON encodings."""
    raw = b"[" + b",".join(encoded) + b"]"
    headers = {}
    body = raw
    if len(raw) > COMPRESS_ABOVE:
        body = _zstd_c.compress(raw)  # deterministic: the same batch, the same bytes
        headers[ENCODING_HEADER] = "zstd"
    # The same records give the same id (JetStream drops the copy); different records under
    # the same run and counters (a reused run id) do not, so the store sees the conflict.
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    span = f"{_key(records[0])}-{_key(records[-1])}"
    headers["Nats-Msg-Id"] = f"{run_token(run)}:{span}:{len(records)}:{digest}"
    events = [r for r in records if isinstance(r, Event)]
    last = max(events, key=lambda e: e.counter) if events else None
    return Part(run, tuple(indexes), body, headers, len(events), last)


def message_json(data: bytes, headers: dict[str, str] | None) -> bytes:
    """The JSON array a message carries; raises ValueError for an unknown encoding."""
    encoding = (headers or {}).get(ENCODING_HEADER, "")
    if encoding == "zstd":
        try:
            return _zstd_d.decompress(data, max_output_size=256 << 20)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not zstd: {exc}") from exc
    if encoding:
        raise ValueError(f"unknown {ENCODING_HEADER}: {encoding!r}")
    return data


# --- control requests (shipper -> any one worker, over core NATS request/reply) ---------------


class ConfirmRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    run: str
    counter: int = 0  # also return the stored hash of this event (0: none)


class RunRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    run: str


class ExitCodeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    run: str
    exit_code: int


class RunState(msgspec.Struct, frozen=True):
    """What the store holds of a run: `gapless` is the highest counter c with 1..c all stored,
    or -1 when not worked out (fewer events are stored than asked about: incomplete anyway)."""

    found: bool
    stored: int = 0
    max_counter: int = 0
    gapless: int = 0
    emitted: int | None = None
    hash: str | None = None  # of the event asked about, when stored


class Reply(msgspec.Struct, frozen=True):
    ok: bool
    kind: str = ""  # on failure: not_found | busy | bad_request | error
    error: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


CONTROL_OPS = ("confirm", "aborted", "exit-code", "verify")


# --- connection, stream and consumer ------------------------------------------------------------


def server_list(urls: str) -> list[str]:
    return [u.strip() for u in urls.split(",") if u.strip()]


async def connect(urls: str, name: str, timeout: float, log: logging.Logger) -> NATS:
    """A client that, once connected, reconnects forever (publishers and fetches wait for
    their answers with their own timeouts); the first connection gets `timeout` seconds."""
    nc = NATS()

    async def on_error(exc: Exception) -> None:
        log.debug("NATS %s: %s: %s", urls, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if not nc.is_closed:
            log.warning("NATS %s: disconnected, reconnecting", urls)

    async def on_reconnected() -> None:
        log.info("NATS %s: reconnected", urls)

    try:
        await asyncio.wait_for(
            nc.connect(
                servers=server_list(urls),
                name=name,
                connect_timeout=max(1, int(timeout)),
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds, float is fine
                max_reconnect_attempts=-1,
                ping_interval=10,
                max_outstanding_pings=3,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            timeout,
        )
    except BaseException:
        with suppress(Exception):
            await nc.close()
        raise
    return nc


@dataclass(frozen=True)
class StreamOptions:
    replicas: int = 1
    retention: str = "workqueue"  # or "limits": keep acked batches until max_age (replay)
    max_age: float = 7 * 86400.0
    max_bytes: int = -1  # -1: bounded by the server's JetStream storage only
    duplicate_window: float = 600.0
    ack_wait: float = 30.0
    max_ack_pending: int = 1024


def stream_config(stream: str, subjects: Subjects, o: StreamOptions) -> api.StreamConfig:
    return api.StreamConfig(
        name=stream,
        description="playledger: Ansible event batches on their way to PostgreSQL",
        subjects=[subjects.events, subjects.dead],
        retention=api.RetentionPolicy(o.retention),
        storage=api.StorageType.FILE,
        num_replicas=o.replicas,
        max_age=o.max_age,
        max_bytes=o.max_bytes,
        max_msgs=-1,
        # Full means: refuse new batches (they wait in the spools), never delete old ones.
        discard=api.DiscardPolicy.NEW,
        duplicate_window=o.duplicate_window,
    )


def consumer_config(consumer: str, subjects: Subjects, o: StreamOptions) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=consumer,
        description="playledger workers: commit to the store, then ack",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=o.ack_wait,
        max_deliver=-1,  # never give up on a batch: a limit would drop it after N tries
        max_ack_pending=o.max_ack_pending,
        filter_subject=subjects.events,
        max_waiting=512,
    )


_STREAM_FIELDS = (
    *("subjects", "retention", "storage", "num_replicas", "max_age", "max_bytes"),
    *("discard", "duplicate_window"),
)
_CONSUMER_FIELDS = ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject")


def _differs(have: Any, want: Any, names: Sequence[str]) -> list[str]:
    out = []
    for name in names:
        a, b = getattr(have, name), getattr(want, name)
        if isinstance(a, float) or isinstance(b, float):
            if abs(float(a or 0) - float(b or 0)) > 1e-3:
                out.append(name)
        elif a != b:
            out.append(name)
    return out


async def init_stream(
    nc: NATS, stream: str, subjects: Subjects, consumer: str, options: StreamOptions
) -> list[str]:
    """Create (or bring up to date) the stream and the durable consumer; one line per step."""
    js = nc.jetstream()
    lines = []
    want = stream_config(stream, subjects, options)
    try:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(want)
            lines.append(f"stream {stream}: created")
        else:
            changed = _differs(info.config, want, _STREAM_FIELDS)
            if changed:
                await js.update_stream(want)
                lines.append(f"stream {stream}: updated ({', '.join(changed)})")
            else:
                lines.append(f"stream {stream}: up to date")
        want_c = consumer_config(consumer, subjects, options)
        try:
            cinfo = await js.consumer_info(stream, consumer)
        except NotFoundError:
            await js.add_consumer(stream, want_c)
            lines.append(f"consumer {consumer}: created")
        else:
            changed = _differs(cinfo.config, want_c, _CONSUMER_FIELDS)
            if changed:
                await js.add_consumer(stream, want_c)
                lines.append(f"consumer {consumer}: updated ({', '.join(changed)})")
            else:
                lines.append(f"consumer {consumer}: up to date")
    except APIError as exc:
        raise StoreError(f"JetStream refused the stream or consumer definition: {exc}") from exc
    lines.append(
        f"  subjects {subjects.events} (batches), {subjects.dead} (refused), file storage, "
        f"{options.retention} retention, R{options.replicas}, max age {options.max_age:g}s, "
        f"duplicate window {options.duplicate_window:g}s, discard new when full"
    )
    lines.append(
        f"  consumer: explicit ack, ack wait {options.ack_wait:g}s, "
        f"max ack pending {options.max_ack_pending}, unlimited redeliveries"
    )
    return lines


async def stream_status(nc: NATS, stream: str, consumer: str) -> dict[str, Any]:
    js = nc.jetstream()
    try:
        s = await js.stream_info(stream)
        c = await js.consumer_info(stream, consumer)
    except NotFoundError as exc:
        raise StoreError(
            f"no stream {stream} with consumer {consumer}: run `playledger streams init`"
        ) from exc
    return {
        "stream": stream,
        "messages": s.state.messages,
        "bytes": s.state.bytes,
        "consumer": consumer,
        "pending": c.num_pending,
        "ack_pending": c.num_ack_pending,
        "redelivered": c.num_redelivered,
        "waiting": c.num_waiting,
    }


def group_by_run(records: Sequence[Record]) -> dict[str, list[int]]:
    """Indexes of the batch's records per run, in batch order."""
    runs: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        runs.setdefault(r.run, []).append(i)
    return runs


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(option: str, text: str) -> float:
    """Seconds from '30s', '10m', '7d' (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"{option} {text!r}: expected a number and a unit (s, m, h, d, w)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def administer(urls: str, timeout: float, action: Callable[[NATS], Awaitable[T]]) -> T:
    """Run `action` on a fresh connection (the CLI's `streams` commands)."""

    async def run() -> T:
        nc = await connect(urls, "playledger-admin", timeout, log)
        try:
            return await action(nc)
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise StoreError(f"NATS at {urls}: {type(exc).__name__}: {exc}") from exc
