"""The NATS sink, `streams init` and the worker's refusals, against the machine's real NATS
JetStream (a stream of each test's own) and PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from conftest import Env
from factories import make_run
from natstest import (
    Names,
    consumer_state,
    free_port,
    fresh_stream,
    stream_counts,
    workers,
)
from pgtest import fresh_schema
from playledger.errors import (
    BatchRejected,
    RunConflict,
    RunNotFound,
    SettingError,
    StoreBusy,
    StoreError,
)
from playledger.events import Event, encode_data, seal
from playledger.jetstream import RunRequest, Subjects, administer, run_token
from playledger.settings import Settings
from playledger.shipper import ship_spool
from playledger.sinks import open_sink
from playledger.sinks.nats import NatsSink
from playledger.spool import SpoolFile
from playledger.store import open_store
from test_faults import wait_for, write_spool


@pytest.fixture
def names() -> Iterator[Names]:
    with fresh_stream() as n:
        yield n


def sink_for(names: Names, confirm_timeout: float = 30.0) -> NatsSink:
    return NatsSink(
        names.url, names.stream, names.subject, names.consumer, confirm_timeout=confirm_timeout
    )


def worker_env(env: Env, names: Names) -> dict[str, str]:
    return {**env.vars, **names.env(), "PLAYLEDGER_BUSY_TIMEOUT": "2"}


# --- settings and streams init -----------------------------------------------------------------


def test_settings_accept_nats_and_refuse_bad_names() -> None:
    s = Settings.load(environ={"PLAYLEDGER_SINK": "nats://a:4222"})
    assert s.sink == "nats://a:4222" and s.nats_stream == "PLAYLEDGER"
    urls = Settings.load(environ={"PLAYLEDGER_NATS_URL": "nats://a:1, nats://b:2"}).nats_url
    assert urls == "nats://a:1,nats://b:2"
    with pytest.raises(SettingError, match="PLAYLEDGER_NATS_STREAM"):
        Settings.load(environ={"PLAYLEDGER_NATS_STREAM": "a.b"})
    with pytest.raises(SettingError, match="PLAYLEDGER_NATS_SUBJECT"):
        Settings.load(environ={"PLAYLEDGER_NATS_SUBJECT": "a.>"})
    with pytest.raises(SettingError, match="PLAYLEDGER_SINK"):
        Settings.load(environ={"PLAYLEDGER_SINK": "amqp://x"})
    sink = open_sink(Settings.load(environ={"PLAYLEDGER_SINK": "nats://127.0.0.1:1"}))
    try:
        assert isinstance(sink, NatsSink)
    finally:
        sink.close()


def test_streams_init_is_idempotent(env: Env, names: Names) -> None:
    env.vars.update(names.env())
    first = env.playledger("streams", "init", "--replicas", "1", "--ack-wait", "20s")
    assert first.returncode == 0, first.stderr
    assert "consumer" in first.stdout and "updated (ack_wait)" in first.stdout
    again = env.playledger("streams", "init", "--replicas", "1", "--ack-wait", "20s")
    assert again.returncode == 0, again.stderr
    assert f"stream {names.stream}: up to date" in again.stdout
    assert f"consumer {names.consumer}: up to date" in again.stdout

    async def config(nc: NATS) -> tuple[api.StreamConfig, api.ConsumerConfig]:
        js = nc.jetstream()
        s = await js.stream_info(names.stream)
        c = await js.consumer_info(names.stream, names.consumer)
        return s.config, c.config

    stream, consumer = administer(names.url, 10, config)
    assert stream.storage == api.StorageType.FILE
    assert stream.retention == api.RetentionPolicy.WORK_QUEUE
    assert stream.discard == api.DiscardPolicy.NEW  # full: refuse, never delete unconsumed
    assert stream.duplicate_window == 600 and stream.num_replicas == 1
    assert consumer.ack_wait == 20 and consumer.max_deliver == -1
    status = env.playledger("streams", "status")
    assert status.returncode == 0 and "0 pending" in status.stdout
    bad = env.playledger("streams", "init", "--max-age", "soon")
    assert bad.returncode == 2 and "--max-age" in bad.stderr


# --- publishing --------------------------------------------------------------------------------


def test_publish_is_acked_deduplicated_and_keyed_by_run(names: Names) -> None:
    sink = sink_for(names)
    try:
        records = make_run(500)
        first = sink.ingest(records)
        assert (first.inserted, first.duplicates) == (500, 0)
        again = sink.ingest(records)  # a shipper retry: JetStream drops it
        assert (again.inserted, again.duplicates) == (0, 500)
        counts = stream_counts(names)
        assert counts == {f"{names.subject}.events.{records[0].run}": 1}
        assert run_token("a b.c") != "a b.c" and " " not in run_token("a b.c")
    finally:
        sink.close()


def _noisy_run(n: int) -> list[Event]:
    """Events with incompressible stdout: a batch of them is larger than max_payload."""
    records = make_run(n)
    rng = random.Random(7)
    prev = "0" * 64
    events = []
    for r in records[1:-1]:
        assert isinstance(r, Event)
        r.stdout = rng.randbytes(3000).hex()
        r.event_data = encode_data({"n": r.counter})
        prev = seal(r, prev)
        events.append(r)
    return events


def test_large_batches_are_split_to_fit_max_payload(names: Names) -> None:
    sink = sink_for(names)
    try:
        events = _noisy_run(400)  # ~2.4 MB of hex, ~1.2 MB compressed: > 1 message
        result = sink.ingest(events)
        assert result.inserted == 400
        counts = stream_counts(names)
        assert sum(counts.values()) >= 2
        huge = _noisy_run(3)
        huge[1].stdout = os.urandom(2_500_000).hex()  # > 1 MB even compressed
        with pytest.raises(BatchRejected) as caught:
            sink.ingest(huge)
        assert set(caught.value.rejected) == {1}
        assert "max_payload" in caught.value.rejected[1]
    finally:
        sink.close()


def test_unreachable_server_is_busy_not_fatal() -> None:
    sink = NatsSink(f"nats://127.0.0.1:{free_port()}", "S", "s", "c", timeout=1)
    try:
        with pytest.raises(StoreBusy, match="cannot reach NATS"):
            sink.ingest(make_run(3))
    finally:
        sink.close()


def test_no_stream_is_busy_with_a_hint(names: Names) -> None:
    sink = NatsSink(names.url, "NOSUCH", "nosuch.prefix", "c", timeout=2)
    try:
        with pytest.raises(StoreBusy, match="streams init"):
            sink.ingest(make_run(3))
    finally:
        sink.close()


# --- the end-to-end confirmation and the worker's refusals ---------------------------------------


def test_run_is_confirmed_only_once_stored_and_lost_batches_are_resent(
    env: Env, names: Names, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """JetStream acked the batches but they never reached the store (purged here, as a
    crashed server that had not synced would lose them): the spool is kept until the
    workers confirm, and sent again once nothing is left in flight."""
    with fresh_schema() as db:
        records = make_run(1200)
        run = records[0].run
        spool = SpoolFile(tmp_path / "spool", run)
        write_spool(spool.spool_dir, records)
        sink = sink_for(names, confirm_timeout=1)
        try:
            report = ship_spool(spool, sink, batch_size=500, timeout=2)
            assert not report.finished and "no playledger worker" in str(report.last_error)
            assert spool.path.exists() and spool.acked() == spool.size()  # acked, not removed
            assert sum(stream_counts(names).values()) == 3

            async def purge(nc: NATS) -> None:
                await nc.jetstream().purge_stream(names.stream)

            administer(names.url, 10, purge)
            with workers(1, worker_env(env, names), db, tmp_path / "logs"):
                report = ship_spool(spool, sink, batch_size=500, timeout=30)
                assert report.finished, report
                assert "publishing the spool again" in caplog.text
                assert not spool.path.exists()
            store = open_store(db)
            try:
                row = store.run(run)
                assert (row.stored, row.emitted, row.status) == (1200, 1200, "successful")
            finally:
                store.close()
        finally:
            sink.close()


def test_bad_messages_and_reused_run_ids_are_dead_letters_never_silent(
    env: Env, names: Names, tmp_path: Path
) -> None:
    with fresh_schema() as db:
        sink = sink_for(names, confirm_timeout=5)
        subjects = Subjects(names.subject)
        try:
            with workers(1, worker_env(env, names), db, tmp_path / "logs") as (worker,):

                async def garbage(nc: NATS) -> None:
                    js = nc.jetstream()
                    await js.publish(subjects.events_of("r1"), b"not json", stream=names.stream)
                    await js.publish(
                        subjects.events_of("r2"), b'[{"kind": "event"}]', stream=names.stream
                    )

                administer(names.url, 10, garbage)
                first = make_run(50)
                sink.ingest(first)
                sink.mark_aborted(first[0].run)  # confirmed: stored
                reused = make_run(50, run=first[0].run)  # same id, other events
                sink.ingest(reused)
                with pytest.raises(RunConflict, match="reused"):
                    sink.mark_aborted(first[0].run)
                metric = "playledger_worker_dead_letters_total"
                # The shipper sees the other hash at once; the worker refuses the batch soon.
                wait_for(lambda: worker.metric(metric + '{reason="conflict"}'), 30, "conflict")
                assert worker.metric(metric + '{reason="undecodable"}') == 1
                assert worker.metric(metric + '{reason="invalid"}') == 1
                assert worker.log.read_text().count("DEAD LETTER") == 3
            counts = stream_counts(names)
            dead = {s: n for s, n in counts.items() if ".dead." in s}
            assert dead == {
                subjects.dead_of("r1"): 1,
                subjects.dead_of("r2"): 1,
                subjects.dead_of(first[0].run): 1,
            }
            assert consumer_state(names)["ack_pending"] == 0
            store = open_store(db)
            try:
                assert store.run(first[0].run).stored == 50  # the first one, untouched
            finally:
                store.close()
        finally:
            sink.close()


def test_worker_without_consumer_fails_loudly(env: Env, names: Names, tmp_path: Path) -> None:
    with fresh_schema() as db:
        env.vars.update({**names.env(), "PLAYLEDGER_NATS_CONSUMER": "missing"})
        out = env.playledger("worker", "--db", db, "--metrics-port", "0", timeout=60)
        assert out.returncode == 1
        assert "no consumer missing" in out.stderr and "streams init" in out.stderr


def test_control_errors_are_typed(env: Env, names: Names, tmp_path: Path) -> None:
    with fresh_schema() as db:
        sink = sink_for(names)
        try:
            with workers(1, worker_env(env, names), db, tmp_path / "logs"):
                with pytest.raises(RunNotFound):
                    sink.verify("00000000-0000-0000-0000-000000000000")
                with pytest.raises(StoreError, match="unknown control request"):
                    sink._control("nonsense", RunRequest("x"))
        finally:
            sink.close()
