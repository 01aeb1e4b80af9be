"""The NATS sink: the shipper's batches into a JetStream stream that `playledger worker`s drain.

Synchronous for the shipper: nats-py is asyncio, so the sink runs one event loop on a thread of
its own (in the shipper process, never inside ansible-playbook) and each call waits for its
result. ingest() returns once JetStream acknowledged every message of the batch; an unreachable
server or a missing ack raises StoreBusy, so the shipper backs off and the records wait in the
spool. A message id derived from each message's content lets JetStream drop a re-publish.

A JetStream ack means "in the server" (on R replicas), not fsynced and not in PostgreSQL. So
before the shipper removes a finished run's spool (it calls mark_aborted then), the sink asks
the workers whether the store holds every event it published: the highest counter with no gap
below it, and that event's hash (a reused run id shows as a different hash). Until they
confirm, the spool stays. If the store still lacks events when none of the run's messages is
left in the stream, the broker lost acknowledged messages: ResendNeeded makes the shipper
publish the spool again from the start, once, and the store takes it idempotently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError

from playledger.errors import (
    BatchRejected,
    ResendNeeded,
    RunConflict,
    RunNotFound,
    StoreBusy,
    StoreError,
)
from playledger.events import Event, RunEnd, RunStart, encode_record
from playledger.jetstream import (
    HEADER_ROOM,
    ConfirmRequest,
    ExitCodeRequest,
    Part,
    Reply,
    RunRequest,
    RunState,
    Subjects,
    build_part,
    connect,
    group_by_run,
)
from playledger.store.base import IngestResult

log = logging.getLogger("playledger.sink.nats")

Record = RunStart | Event | RunEnd
T = TypeVar("T")
NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
CONFIRM_POLL = (0.1, 2.0)  # seconds between confirmation requests: first, at most
IDLE_POLLS = 2  # "missing" answers in a row with nothing in flight before a resend
VERIFY_TIMEOUT = 300.0  # a worker verifies a whole run (hash chain included)
_reply_decoder = msgspec.json.Decoder(Reply)
_state_decoder = msgspec.json.Decoder(RunState)


@dataclass
class Published:
    """What this sink got acknowledged for a run: the end-to-end check compares the store."""

    last_counter: int = 0
    last_hash: str = ""
    ended: bool = False  # the run's final record was published


def judge(state: RunState, sent: Published | None) -> tuple[str, str]:
    """("ok" | "missing" | "conflict", why) for the store's view of a run."""
    if not state.found:
        return "missing", "the run is not in the store"
    if sent is not None and sent.last_counter:
        if state.gapless < sent.last_counter:
            return "missing", f"{state.stored:,} events stored, up to {sent.last_counter:,} sent"
        if state.hash != sent.last_hash:
            return "conflict", f"event {sent.last_counter} is stored as a different event"
    if sent is not None and sent.ended and state.emitted is None:
        return "missing", "the final record is not stored"
    if sent is None:  # a shipper that published nothing itself: the store's own count
        target = state.emitted if state.emitted is not None else state.max_counter
        if state.gapless < target:
            return "missing", f"{state.stored:,} events stored of {target:,}"
    return "ok", ""


class NatsSink:
    def __init__(
        self,
        url: str,
        stream: str,
        subject: str,
        consumer: str,
        timeout: float = 10.0,
        confirm_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.subjects = Subjects(subject)
        self._stream = stream
        self._consumer = consumer
        self._timeout = timeout
        self._confirm_timeout = confirm_timeout
        self._clock = clock
        self._sleep = sleep
        self._published: dict[str, Published] = {}
        self._resent: set[str] = set()
        self._nc: NATS | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="playledger-nats", daemon=True
        )
        self._thread.start()

    # --- Sink -------------------------------------------------------------------------------

    def ingest(self, records: Sequence[Record]) -> IngestResult:
        if not records:
            return IngestResult(0, 0)
        return self._call(self._publish(records), 2 * self._timeout + 5)

    def mark_aborted(self, run_uuid: str) -> None:
        """Called when the run's spool is fully shipped and about to be removed: first the
        store must confirm it holds what was published; then a run without its final
        record is marked aborted (by a worker, after everything before it is stored)."""
        sent = self._published.get(run_uuid)
        deadline = self._clock() + self._confirm_timeout
        idle = 0
        why = "no answer yet"
        pause = CONFIRM_POLL[0]
        while True:
            try:
                state = self._confirm(run_uuid, sent)
            except StoreBusy as exc:
                why, state = str(exc), None
            if state is not None:
                verdict, why = judge(state, sent)
                if verdict == "ok":
                    break
                if verdict == "conflict":
                    raise RunConflict(
                        f"run {run_uuid}: {why}; was the run id reused (PLAYLEDGER_RUN_ID)? "
                        "The spool is kept"
                    )
                idle = idle + 1 if self._call(self._in_flight(run_uuid), 30) == 0 else 0
                if idle >= IDLE_POLLS:
                    self._lost(run_uuid, why)
            if self._clock() >= deadline:
                raise StoreBusy(
                    f"run {run_uuid}: JetStream acknowledged every batch but the store has not "
                    f"confirmed them within {self._confirm_timeout:g}s ({why}); the spool is kept"
                )
            self._sleep(pause)
            pause = min(pause * 1.5, CONFIRM_POLL[1])
        self._control("aborted", RunRequest(run_uuid))
        self._published.pop(run_uuid, None)

    def close(self) -> None:
        if self._nc is not None and not self._loop.is_closed():
            try:
                self._call(self._nc.close(), 10)
            except StoreError as exc:
                log.debug("closing the NATS connection: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- beyond the Sink protocol: what `playledger run` asks (through a worker) ------------

    def set_exit_code(self, run_uuid: str, exit_code: int) -> None:
        self._control("exit-code", ExitCodeRequest(run_uuid, exit_code))

    def verify(self, run_uuid: str) -> dict[str, Any]:
        """The store's verify report of a run (with `hosts`), computed by a worker."""
        answer = self._control("verify", RunRequest(run_uuid), VERIFY_TIMEOUT)
        report: dict[str, Any] = msgspec.json.decode(answer)
        return report

    # --- internals ----------------------------------------------------------------------------

    def _lost(self, run: str, why: str) -> None:
        if run in self._resent:
            raise StoreError(
                f"run {run}: still not in the store after publishing it again ({why}); look for "
                f"dead letters on {self.subjects.dead_of(run)} and in the workers' logs. "
                "The spool is kept"
            )
        self._resent.add(run)
        self._published.pop(run, None)
        log.error(
            "run %s: JetStream acknowledged events that never reached the store (%s) and none "
            "of the run's messages is left in stream %s: publishing the spool again",
            run,
            why,
            self._stream,
        )
        raise ResendNeeded(f"run {run}: acknowledged by JetStream but lost before the store")

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise StoreBusy(f"NATS at {self.url}: no answer within {timeout:g}s") from exc

    async def _client(self) -> NATS:
        nc = self._nc
        if nc is None or nc.is_closed:
            try:
                nc = self._nc = await connect(self.url, "playledger-shipper", self._timeout, log)
            except NATS_ERRORS as exc:
                raise StoreBusy(f"cannot reach NATS at {self.url}: {_text(exc)}") from exc
        if not nc.is_connected:
            raise StoreBusy(f"NATS at {self.url}: disconnected, reconnecting")
        return nc

    def _busy(self, exc: BaseException, subject: str) -> StoreBusy:
        if isinstance(exc, (NoStreamResponseError, nats.errors.NoRespondersError)):
            why = (
                f"no JetStream stream answers on {subject}: is JetStream up, and was "
                f"`playledger streams init` run for stream {self._stream}?"
            )
        elif isinstance(exc, APIError):
            why = f"JetStream refused the batch: {exc}"
        elif isinstance(exc, asyncio.TimeoutError):
            why = f"no acknowledgement from JetStream within {self._timeout:g}s"
        else:
            why = _text(exc)
        return StoreBusy(f"NATS at {self.url}: {why}")

    def _split(
        self,
        run: str,
        records: list[Record],
        encoded: list[bytes],
        indexes: list[int],
        limit: int,
        out: list[Part],
    ) -> None:
        """One message, or halves until each fits the server's max_payload."""
        part = build_part(run, records, encoded, indexes)
        if len(part.body) <= limit:
            out.append(part)
            return
        if len(records) == 1:
            reason = (
                f"one record of {len(part.body):,} bytes (compressed) exceeds the NATS "
                f"server's max_payload of {limit + HEADER_ROOM:,}: raise max_payload"
            )
            raise BatchRejected(f"NATS at {self.url}: {reason}", {indexes[0]: reason})
        mid = len(records) // 2
        self._split(run, records[:mid], encoded[:mid], indexes[:mid], limit, out)
        self._split(run, records[mid:], encoded[mid:], indexes[mid:], limit, out)

    async def _publish(self, records: Sequence[Record]) -> IngestResult:
        nc = await self._client()
        limit = nc.max_payload - HEADER_ROOM
        encoded = [encode_record(r) for r in records]
        parts: list[Part] = []
        for run, indexes in group_by_run(records).items():
            self._split(
                run,
                [records[i] for i in indexes],
                [encoded[i] for i in indexes],
                indexes,
                limit,
                parts,
            )
        for p in parts:
            if p.run in self._resent:  # past the duplicate window's memory of the lost ones
                p.headers["Nats-Msg-Id"] += ":resent"
        js = nc.jetstream()
        acks = await asyncio.gather(
            *(
                js.publish(
                    self.subjects.events_of(p.run),
                    p.body,
                    timeout=self._timeout,
                    stream=self._stream,
                    headers=p.headers,
                )
                for p in parts
            ),
            return_exceptions=True,
        )
        for part, ack in zip(parts, acks, strict=True):
            if isinstance(ack, NATS_ERRORS):
                raise self._busy(ack, self.subjects.events_of(part.run)) from ack
            if isinstance(ack, BaseException):
                raise ack
        inserted = duplicates = 0
        for part, ack in zip(parts, acks, strict=True):
            assert isinstance(ack, api.PubAck)
            if ack.duplicate:
                duplicates += part.events
            else:
                inserted += part.events
            sent = self._published.setdefault(part.run, Published())
            if part.last_event is not None and part.last_event.counter > sent.last_counter:
                sent.last_counter = part.last_event.counter
                sent.last_hash = part.last_event.hash
            sent.ended = sent.ended or any(isinstance(records[i], RunEnd) for i in part.indexes)
        return IngestResult(inserted, duplicates)

    def _confirm(self, run: str, sent: Published | None) -> RunState:
        counter = sent.last_counter if sent is not None else 0
        return _state_decoder.decode(self._control("confirm", ConfirmRequest(run, counter)))

    async def _in_flight(self, run: str) -> int | None:
        """The run's messages not yet committed, or None when JetStream cannot tell us.

        Work-queue retention deletes a message once acked, so the stream's count on the run's
        subject is exact, when the server's per-subject answer adds up (2.9 sometimes leaves
        it out); otherwise only "nothing pending in the consumer at all" is known."""
        subject = self.subjects.events_of(run)
        try:
            nc = await self._client()
            js = nc.jetstream()
            info = await js.stream_info(self._stream, subjects_filter=">")
            if info.config.retention == api.RetentionPolicy.WORK_QUEUE:
                counts = info.state.subjects
                if counts is not None and sum(counts.values()) == info.state.messages:
                    return counts.get(subject, 0)
                if info.state.messages == 0:
                    return 0
            c = await js.consumer_info(self._stream, self._consumer, timeout=self._timeout)
            return int(c.num_pending or 0) + int(c.num_ack_pending or 0)
        except (*NATS_ERRORS, StoreBusy) as exc:
            log.debug("run %s: cannot tell what is in flight: %s", run, exc)
            return None

    def _control(self, op: str, request: msgspec.Struct, timeout: float | None = None) -> bytes:
        wait = max(self._timeout, timeout or 0.0)
        return self._call(self._request(op, request, wait), wait + 5)

    async def _request(self, op: str, request: msgspec.Struct, timeout: float) -> bytes:
        subject = self.subjects.control_op(op)
        nc = await self._client()
        try:
            msg = await nc.request(subject, msgspec.json.encode(request), timeout=timeout)
        except nats.errors.NoRespondersError as exc:
            raise StoreBusy(
                f"no playledger worker answers on {subject} (are workers running, with the "
                "same PLAYLEDGER_NATS_SUBJECT and PLAYLEDGER_NATS_CONSUMER?)"
            ) from exc
        except NATS_ERRORS as exc:
            raise StoreBusy(f"NATS at {self.url}: {subject}: {_text(exc)}") from exc
        try:
            reply = _reply_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StoreError(f"{subject}: unreadable answer from a worker: {exc}") from exc
        if reply.ok:
            return bytes(reply.data)
        if reply.kind == "not_found":
            raise RunNotFound(reply.error)
        if reply.kind == "busy":
            raise StoreBusy(reply.error)
        raise StoreError(f"{subject}: worker answered: {reply.error}")


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
