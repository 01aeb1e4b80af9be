"""`playledger worker`: drains the JetStream stream into the store; any number of workers share
one durable pull consumer (and the load).

Per fetch: each message is decoded with the HTTP ingest's strict validation, the records are
committed in transactions of up to PLAYLEDGER_MAX_BATCH_RECORDS, and a message is acked only
after the transaction holding its records committed. A redelivered message (a worker killed,
an ack lost) is harmless: the store is idempotent. While the store is unavailable the worker
keeps its messages (in-progress acks hold them past ack_wait) and retries with backoff; nothing
is acked. A message that can never be stored (undecodable, invalid, a reused run id) is copied
to <prefix>.dead.<run> with the reason, terminated, logged as an error and counted: never
dropped silently. SIGTERM/SIGINT only set a flag; the loop finishes the messages in hand, acks
them and exits 0. The worker also answers the shippers' control requests (see the NATS sink).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from playledger.api.schema import ApiError, Limits, decode_batch
from playledger.errors import (
    PlayledgerError,
    RunConflict,
    RunNotFound,
    StoreBusy,
    StoreError,
    UsageError,
)
from playledger.events import Record
from playledger.jetstream import (
    ERROR_HEADER,
    ConfirmRequest,
    ExitCodeRequest,
    Reply,
    RunRequest,
    RunState,
    Subjects,
    connect,
    message_json,
)
from playledger.store.base import IngestResult, Store
from playledger.verify import verify_run

log = logging.getLogger("playledger.worker")

NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
FETCH_WAIT = 1.0  # seconds an idle fetch waits for messages; also the stop flag's latency
BUSY_FETCH_WAIT = 0.05  # while messages flow: a fetch returns what came within this
MAX_BACKOFF = 5.0
STORE_ERROR_TRIES = 3  # a batch the store refuses (not "busy") this often is a dead letter
PENDING_EVERY = 2.0  # seconds between consumer-info reads for the pending gauges


@dataclass(frozen=True)
class WorkerConfig:
    nats_url: str
    stream: str
    subject: str
    consumer: str
    fetch: int = 16
    commit_records: int = 10_000
    max_event_bytes: int = 1 << 20
    connect_timeout: float = 10.0


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.consumed = Counter(
            "playledger_worker_messages_consumed", "Messages fetched from JetStream.", registry=r
        )
        self.redelivered = Counter(
            "playledger_worker_messages_redelivered",
            "Fetched messages that had been delivered before (a worker died or an ack was lost; "
            "harmless: the store is idempotent).",
            registry=r,
        )
        self.acked = Counter(
            "playledger_worker_messages_acked",
            "Messages acknowledged, each after its records committed.",
            registry=r,
        )
        self.committed = Counter(
            "playledger_worker_events_committed", "Events committed to the store.", registry=r
        )
        self.duplicates = Counter(
            "playledger_worker_events_duplicate",
            "Events received again and ignored (already stored).",
            registry=r,
        )
        self.dead_letters = Counter(
            "playledger_worker_dead_letters",
            "Messages that can never be stored, copied to <prefix>.dead.<run> and terminated: "
            "undecodable, invalid, conflict (a reused run id), store_error.",
            ["reason"],
            registry=r,
        )
        self.store_unavailable = Counter(
            "playledger_worker_store_unavailable",
            "Commits that found the store unavailable (retried with backoff, nothing acked).",
            registry=r,
        )
        self.pending = Gauge(
            "playledger_worker_consumer_pending",
            "Messages in the consumer not yet delivered to any worker.",
            registry=r,
        )
        self.ack_pending = Gauge(
            "playledger_worker_consumer_ack_pending",
            "Messages delivered to workers and not yet acknowledged.",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "playledger_worker_commit_seconds",
            "Seconds per store transaction (one or more messages).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        for reason in ("undecodable", "invalid", "conflict", "store_error"):
            self.dead_letters.labels(reason)


class BadMessage(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def run_state(store: Store, run: str, counter: int) -> RunState:
    """The store's view of a run for the shipper's end-to-end check; cheap while the run is
    still being committed (shippers ask again and again until it is complete)."""
    try:
        row = store.run(run)
    except RunNotFound:
        return RunState(found=False)
    top = store.max_counter(row.id)
    if row.stored == top:  # counters are unique and >= 1: no gap
        gapless = top
    elif row.stored < max(counter, row.emitted or 0):
        gapless = -1  # cannot be complete yet; not worth a scan of every stored counter
    else:
        gapless = 0
        for c in store.counters(row.id):
            if c != gapless + 1:
                break
            gapless = c
    stored_hash = None
    if 0 < counter <= top:
        page = store.event_page(row.id, after=counter - 1, limit=1)
        if page and page[0].counter == counter:
            stored_hash = page[0].hash
    return RunState(True, row.stored, top, gapless, row.emitted, stored_hash)


def answer_control(store: Store, op: str, data: bytes) -> bytes:
    """One control request, run on a thread (store calls block)."""
    if op == "confirm":
        confirm = msgspec.json.decode(data, type=ConfirmRequest)
        return msgspec.json.encode(run_state(store, confirm.run, confirm.counter))
    if op == "aborted":
        store.mark_aborted(msgspec.json.decode(data, type=RunRequest).run)
        return b"null"
    if op == "exit-code":
        req = msgspec.json.decode(data, type=ExitCodeRequest)
        store.set_exit_code(req.run, req.exit_code)
        return b"null"
    if op == "verify":
        row = store.run(msgspec.json.decode(data, type=RunRequest).run)
        report = verify_run(store, row).as_dict()
        report["hosts"] = row.hosts
        return msgspec.json.encode(report)
    raise UsageError(f"unknown control request {op!r}")


def _header_text(text: str) -> str:
    return " ".join(text.split())[:1000]  # a header value is one line


class Worker:
    def __init__(self, config: WorkerConfig, store: Store, metrics: WorkerMetrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.subjects = Subjects(config.subject)
        self.stopping = False
        self._limits = Limits(1 << 40, 1 << 40, config.max_event_bytes)  # NATS bounds the size
        self._held: dict[int, Msg] = {}  # id -> fetched, not yet acked/nak'ed/terminated
        self._tasks: set[asyncio.Task[None]] = set()
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._ack_wait = 30.0
        self._flowing = False  # the last fetch brought messages

    def request_stop(self) -> None:
        """The signal handler: only sets the flag the loop checks."""
        self.stopping = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        nc = await self._connect()
        if nc is None:
            return
        background: list[asyncio.Task[None]] = []
        try:
            self._nc, self._js = nc, nc.jetstream()
            psub = await self._bind(self._js)
            control = await nc.subscribe(
                self.subjects.control, queue=self.config.consumer, cb=self._on_control
            )
            background = [
                asyncio.create_task(self._keep_alive()),
                asyncio.create_task(self._watch_pending(psub)),
            ]
            log.info(
                "worker consuming stream %s with consumer %s (ack wait %gs, fetch %d)",
                self.config.stream,
                self.config.consumer,
                self._ack_wait,
                self.config.fetch,
            )
            while not self.stopping:
                msgs = await self._fetch(psub)
                if msgs:
                    await self._process(msgs)
            await control.unsubscribe()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=30)
            log.info("worker stopped: every message in hand committed and acked")
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._held:  # only on an unexpected error: hand them back now
                await self._nak(list(self._held.values()))
            try:
                await nc.flush(timeout=10)  # the last acks
            except NATS_ERRORS as exc:
                log.warning("flushing the last acks: %s (those messages come again)", exc)
            await nc.close()

    # --- connection -----------------------------------------------------------------------------

    async def _connect(self) -> NATS | None:
        backoff = 0.5
        while not self.stopping:
            try:
                return await connect(
                    self.config.nats_url, "playledger-worker", self.config.connect_timeout, log
                )
            except NATS_ERRORS as exc:
                log.warning(
                    "cannot reach NATS at %s (%s); retrying in %.1fs",
                    self.config.nats_url,
                    exc or type(exc).__name__,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        return None

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        try:
            info = await js.consumer_info(self.config.stream, self.config.consumer)
        except NotFoundError as exc:
            raise StoreError(
                f"no consumer {self.config.consumer} on stream {self.config.stream}: "
                "run `playledger streams init` first"
            ) from exc
        except NATS_ERRORS as exc:
            raise StoreError(f"cannot read consumer {self.config.consumer}: {exc}") from exc
        self._ack_wait = float(info.config.ack_wait or 30.0)
        return await js.pull_subscribe_bind(
            consumer=self.config.consumer, stream=self.config.stream
        )

    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        # A fetch of n waits until n messages came or its time is up, so while messages flow
        # it is given little time: what is there now is committed now, not a second later.
        wait = BUSY_FETCH_WAIT if self._flowing else FETCH_WAIT
        try:
            msgs = await psub.fetch(self.config.fetch, timeout=wait)
        except TimeoutError:  # nothing to fetch (nats' own TimeoutError is a subclass)
            self._flowing = False
            return []
        except NATS_ERRORS as exc:
            log.warning("fetch from %s: %s: %s", self.config.stream, type(exc).__name__, exc)
            self._flowing = False
            await asyncio.sleep(FETCH_WAIT)
            return []
        self._flowing = True
        return msgs

    # --- messages -------------------------------------------------------------------------------

    def _decode(self, msg: Msg) -> list[Record]:
        try:
            body = message_json(msg.data, msg.headers)
        except ValueError as exc:
            raise BadMessage("undecodable", str(exc)) from exc
        try:
            return decode_batch(body, self._limits)
        except ApiError as exc:
            named = "; ".join(f"#{e.index} {e.field}: {e.message}" for e in exc.errors[:5])
            reason = "undecodable" if exc.code == "malformed_json" else "invalid"
            raise BadMessage(reason, f"{exc.message} {named}".strip()) from exc

    async def _process(self, msgs: Sequence[Msg]) -> None:
        items: list[tuple[Msg, list[Record]]] = []
        for msg in msgs:
            self.metrics.consumed.inc()
            self._held[id(msg)] = msg
            if msg.metadata.num_delivered > 1:
                self.metrics.redelivered.inc()
            try:
                items.append((msg, self._decode(msg)))
            except BadMessage as exc:
                await self._dead_letter(msg, exc.reason, str(exc))
        group: list[tuple[Msg, list[Record]]] = []
        size = 0
        for item in items:
            if group and size + len(item[1]) > self.config.commit_records:
                await self._commit(group)
                group, size = [], 0
            group.append(item)
            size += len(item[1])
        if group:
            await self._commit(group)

    async def _commit(self, group: list[tuple[Msg, list[Record]]]) -> None:
        """Commit the group's records in one transaction, then ack its messages."""
        records = [r for _, rs in group for r in rs]
        msgs = [m for m, _ in group]
        backoff, refusals = 0.2, 0
        while True:
            started = time.perf_counter()
            try:
                result: IngestResult = await asyncio.to_thread(self.store.ingest, records)
            except StoreBusy as exc:
                self.metrics.store_unavailable.inc()
                if self.stopping:
                    log.warning(
                        "stopping while the store is unavailable: %d message(s) handed back "
                        "unacknowledged for redelivery (%s)",
                        len(msgs),
                        exc,
                    )
                    await self._nak(msgs)
                    return
                log.warning(
                    "store unavailable; holding %d message(s) unacknowledged, retrying in "
                    "%.1fs: %s",
                    len(msgs),
                    backoff,
                    exc,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except (RunConflict, StoreError) as exc:
                if len(group) > 1:  # find the message at fault; commit the others
                    for item in group:
                        await self._commit([item])
                    return
                if isinstance(exc, RunConflict):
                    await self._dead_letter(msgs[0], "conflict", str(exc))
                    return
                refusals += 1
                if refusals >= STORE_ERROR_TRIES:
                    await self._dead_letter(msgs[0], "store_error", str(exc))
                    return
                log.error("the store refused a batch (try %d): %s", refusals, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            break
        try:
            for m in msgs:
                await m.ack()
            assert self._nc is not None
            await self._nc.flush(timeout=10)
        except NATS_ERRORS as exc:
            log.warning("acks may be lost (%s): those messages come again, harmlessly", exc)
        self._release(msgs)
        self.metrics.acked.inc(len(msgs))
        self.metrics.committed.inc(result.inserted)
        self.metrics.duplicates.inc(result.duplicates)

    def _release(self, msgs: Sequence[Msg]) -> None:
        for m in msgs:
            self._held.pop(id(m), None)

    async def _nak(self, msgs: Sequence[Msg]) -> None:
        for m in msgs:
            try:
                await m.nak()
            except NATS_ERRORS as exc:
                log.debug("nak: %s (redelivered after ack_wait instead)", exc)
        self._release(msgs)

    async def _dead_letter(self, msg: Msg, reason: str, detail: str) -> None:
        """Copy the message to <prefix>.dead.<run> with the reason, then terminate it."""
        assert self._js is not None
        self.metrics.dead_letters.labels(reason).inc()
        md = msg.metadata
        token = msg.subject.rsplit(".", 1)[-1]
        target = f"{self.subjects.prefix}.dead.{token}"
        headers = dict(msg.headers or {})
        headers[ERROR_HEADER] = _header_text(f"{reason}: {detail}")
        headers["Nats-Msg-Id"] = "dead:" + headers.get("Nats-Msg-Id", str(md.sequence.stream))
        log.error(
            "DEAD LETTER (%s): message %s (stream sequence %d, delivery %d) on %s cannot be "
            "stored: %s; copied to %s and terminated",
            reason,
            headers["Nats-Msg-Id"][5:],
            md.sequence.stream,
            md.num_delivered,
            msg.subject,
            detail,
            target,
        )
        try:
            await self._js.publish(
                target, msg.data, timeout=10, stream=self.config.stream, headers=headers
            )
        except NATS_ERRORS as exc:
            log.error("cannot copy it to %s (%s): left for redelivery instead", target, exc)
            await self._nak([msg])
            return
        try:
            await msg.term()
        except NATS_ERRORS as exc:
            log.warning("term: %s (it comes again and is copied again, harmlessly)", exc)
        self._release([msg])

    async def _keep_alive(self) -> None:
        """In-progress acks for every message in hand, so a long commit or a store outage
        does not get them redelivered to another worker meanwhile."""
        while True:
            await asyncio.sleep(max(self._ack_wait / 3, 0.5))
            for m in list(self._held.values()):
                try:
                    await m.in_progress()
                except NATS_ERRORS as exc:
                    log.debug("in-progress ack: %s", exc)

    async def _watch_pending(self, psub: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                info = await psub.consumer_info()
            except NATS_ERRORS as exc:
                log.debug("consumer info: %s", exc)
            else:
                self.metrics.pending.set(info.num_pending or 0)
                self.metrics.ack_pending.set(info.num_ack_pending or 0)
            await asyncio.sleep(PENDING_EVERY)

    # --- control requests -------------------------------------------------------------------------

    async def _on_control(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        op = msg.subject.rsplit(".", 1)[-1]
        reply: Reply
        try:
            data = await asyncio.to_thread(answer_control, self.store, op, msg.data)
            reply = Reply(True, data=msgspec.Raw(data))
        except RunNotFound as exc:
            reply = Reply(False, "not_found", str(exc))
        except StoreBusy as exc:
            reply = Reply(False, "busy", str(exc))
        except (msgspec.DecodeError, msgspec.ValidationError, UsageError) as exc:
            reply = Reply(False, "bad_request", f"{op}: {exc}")
        except PlayledgerError as exc:
            log.exception("control request %s failed", op)
            reply = Reply(False, "error", str(exc))
        if not msg.reply:
            return
        try:
            await msg.respond(msgspec.json.encode(reply))
        except NATS_ERRORS as exc:
            log.warning("cannot answer %s: %s", op, exc)


def run_worker(
    config: WorkerConfig, store: Store, metrics_host: str, metrics_port: int
) -> dict[str, int]:
    """Run a worker until SIGTERM/SIGINT; returns its final counters."""
    metrics = WorkerMetrics()
    server = None
    if metrics_port:
        server, _ = start_http_server(metrics_port, metrics_host, registry=metrics.registry)
        log.info("worker metrics on http://%s:%d/metrics", metrics_host, metrics_port)
    try:
        asyncio.run(Worker(config, store, metrics).run())
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    sample = metrics.registry.get_sample_value
    return {
        name: int(sample(f"playledger_worker_{name}_total") or 0)
        for name in ("messages_consumed", "messages_redelivered", "events_committed")
    }
