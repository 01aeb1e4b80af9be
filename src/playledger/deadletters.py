"""Dead letters of the NATS transport: list them (`playledger streams dead`) and put them back
(`playledger streams replay`) once the cause is fixed.

Reading uses JetStream's message-get API by subject (`next_by_subj`): it neither consumes nor
changes anything, and works on a work-queue stream, which refuses a second (ordered, unacked)
consumer. Replay publishes each dead letter again to its run's events subject, waits for the
publish ack, and only then deletes the dead letter by sequence. A process that dies between the
ack and the delete leaves the dead letter in place: a re-run replays it again, and the copy is
dropped by JetStream (the replay's message id is derived from the dead letter's sequence, within
the duplicate window) or else counted as duplicates by the idempotent store; never stored twice.
A replayed batch the store refuses again is simply dead-lettered again, with a new sequence.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from playledger.errors import StoreError
from playledger.jetstream import ERROR_HEADER, Subjects, message_json

log = logging.getLogger("playledger.streams")
LIST_TIMEOUT = 60.0  # seconds for a whole listing; --limit bounds its size
PUBLISH_TIMEOUT = 10.0  # seconds to wait for one replayed message's publish ack
_DEAD_PREFIX = "dead:"  # the worker's Nats-Msg-Id of a dead letter: dead:<original id>
_REPLAY_ID = re.compile(r"^replay:\d+:")
_NO_MESSAGE = 10057  # JetStream's error code for "no message found"
_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class DeadLetter:
    seq: int  # stream sequence of the dead letter
    time: str  # when it was dead-lettered (UTC, ISO 8601)
    subject: str
    run: str  # from the records when they name one run, else the subject's run token
    records: int | None  # None: the body is not a JSON array (undecodable)
    reason: str  # the Playledger-Error header: "<reason>: <detail>"
    msg_id: str  # the Nats-Msg-Id of the message that was refused

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Listing:
    total: int  # dead letters selected in the stream (the listing may hold fewer: --limit)
    letters: list[DeadLetter]


@dataclass(frozen=True)
class Replayed:
    letter: DeadLetter
    seq: int  # the new message's stream sequence (the earlier copy's, when a duplicate)
    duplicate: bool  # JetStream already had this replay (an earlier replay died before delete)


def _describe(msg: api.RawStreamMsg, token: str) -> DeadLetter:
    headers: dict[str, str] = dict(msg.headers or {})
    data = msg.data or b""
    records: int | None = None
    runs: set[str] = set()
    try:
        items = msgspec.json.decode(message_json(data, headers))
    except (ValueError, msgspec.DecodeError):
        items = None
    if isinstance(items, list):
        records = len(items)
        runs = {r["run"] for r in items if isinstance(r, dict) and isinstance(r.get("run"), str)}
    run = runs.pop() if len(runs) == 1 else token
    msg_id = headers.get("Nats-Msg-Id", "")
    return DeadLetter(
        seq=int(msg.seq or 0),
        time=msg.time.isoformat().replace("+00:00", "Z") if msg.time else "",
        subject=msg.subject or "",
        run=run,
        records=records,
        reason=headers.get(ERROR_HEADER, ""),
        msg_id=msg_id.removeprefix(_DEAD_PREFIX),
    )


def _filter(subjects: Subjects, run: str | None) -> str:
    return subjects.dead_of(run) if run is not None else subjects.dead


async def _stream_info(nc: NATS, stream: str, subject: str) -> api.StreamInfo:
    try:
        return await nc.jetstream().stream_info(stream, subjects_filter=subject)
    except NotFoundError as exc:
        raise StoreError(f"no stream {stream}: run `playledger streams init`") from exc


async def _next(nc: NATS, stream: str, subject: str, seq: int) -> api.RawStreamMsg | None:
    """The first message on `subject` at or after `seq`, without consuming it; None: none."""
    try:
        return await nc.jetstream().get_msg(stream, seq=seq, subject=subject, next=True)
    except NotFoundError:
        return None


async def _scan(
    nc: NATS, stream: str, subject: str, seq: int, up_to: int, limit: int
) -> list[tuple[api.RawStreamMsg, DeadLetter]]:
    """Up to `limit` dead letters on `subject` from sequence `seq` to `up_to`, in order."""
    out: list[tuple[api.RawStreamMsg, DeadLetter]] = []
    while len(out) < limit and seq <= up_to:
        msg = await _next(nc, stream, subject, seq)
        if msg is None or not msg.seq or msg.seq > up_to:
            break
        token = (msg.subject or "").rsplit(".", 1)[-1]
        out.append((msg, _describe(msg, token)))
        seq = msg.seq + 1
    return out


async def list_dead(
    nc: NATS, stream: str, subjects: Subjects, run: str | None, limit: int
) -> Listing:
    """Up to `limit` dead letters (of one run, or all), oldest first, and how many there are."""

    async def listing() -> Listing:
        subject = _filter(subjects, run)
        info = await _stream_info(nc, stream, subject)
        total = sum((info.state.subjects or {}).values())
        if not total:
            return Listing(0, [])
        found = await _scan(nc, stream, subject, 1, info.state.last_seq or 0, limit)
        return Listing(total, [letter for _, letter in found])

    try:
        return await asyncio.wait_for(listing(), LIST_TIMEOUT)
    except TimeoutError as exc:
        raise StoreError(
            f"listing the dead letters of {stream} took over {LIST_TIMEOUT:g}s: "
            "use --run or a smaller --limit"
        ) from exc


def replay_id(seq: int, msg_id: str) -> str:
    """A new Nats-Msg-Id for replaying dead letter `seq` (the original would be dropped as a
    duplicate); the same for the same dead letter, so a repeated replay is dropped instead."""
    return f"replay:{seq}:{_REPLAY_ID.sub('', msg_id)}"


def _replay_headers(msg: api.RawStreamMsg, letter: DeadLetter) -> dict[str, str]:
    """The message's own headers (its encoding) without the error and JetStream's headers."""
    headers = {
        k: v
        for k, v in (msg.headers or {}).items()
        if not k.lower().startswith("nats-") and k.lower() != ERROR_HEADER.lower()
    }
    headers["Nats-Msg-Id"] = replay_id(letter.seq, letter.msg_id)
    return headers


async def replay_dead(
    nc: NATS,
    stream: str,
    subjects: Subjects,
    run: str | None,
    done: Callable[[Replayed], None],
) -> int:
    """Replay the dead letters (of one run, or all) that are in the stream now, oldest first;
    `done` hears of each once it is re-published and deleted. Returns how many.

    Interrupted after a publish ack but before its delete, a re-run replays that dead letter
    again: JetStream drops the copy (the same replay id, within the duplicate window), or the
    store counts its events as duplicates; they are never stored twice."""
    js = nc.jetstream()
    subject = _filter(subjects, run)
    info = await _stream_info(nc, stream, subject)
    if not sum((info.state.subjects or {}).values()):
        return 0
    # Only what is there now: a batch refused again comes back after this sequence.
    up_to = info.state.last_seq or 0
    count, seq = 0, 1
    while found := await _scan(nc, stream, subject, seq, up_to, 1):
        msg, letter = found[0]
        seq = letter.seq + 1
        target = f"{subjects.prefix}.events.{letter.subject.rsplit('.', 1)[-1]}"
        try:
            ack = await js.publish(
                target,
                msg.data or b"",
                timeout=PUBLISH_TIMEOUT,
                stream=stream,
                headers=_replay_headers(msg, letter),
            )
        except _NATS_ERRORS as exc:
            raise StoreError(
                f"replaying dead letter {letter.seq} to {target}: {type(exc).__name__}: {exc} "
                f"({count} replayed before it; run it again to continue)"
            ) from exc
        try:
            await js.delete_msg(stream, letter.seq)
        except _NATS_ERRORS as exc:
            if isinstance(exc, APIError) and exc.err_code == _NO_MESSAGE:
                log.info("dead letter %d was deleted meanwhile (another replay)", letter.seq)
            else:
                raise StoreError(
                    f"dead letter {letter.seq} was replayed (stream sequence {ack.seq}) but not "
                    f"deleted: {type(exc).__name__}: {exc}; a re-run replays it again, harmlessly"
                ) from exc
        count += 1
        done(Replayed(letter, ack.seq, bool(ack.duplicate)))
    return count
