"""POST /api/v1/ingest: compression, strict all-or-nothing validation, limits, backpressure,
the 200-only-after-commit rule, and the run endpoints the shipper uses."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import zstandard

from apitest import Api, running_api
from factories import make_run
from playledger.api.settings import ApiSettings
from playledger.errors import RunNotFound, StoreBusy
from playledger.events import GENESIS_HASH, Event, Record, RunEnd, encode_record, seal
from playledger.sinks.http import encode_batch
from playledger.store import Store
from playledger.store.sqlite import SQLiteStore
from test_api import assert_error


def events_of(records: list[Record]) -> list[Event]:
    return [r for r in records if isinstance(r, Event)]


def reseal(records: list[Record]) -> None:
    prev = GENESIS_HASH
    for e in events_of(records):
        prev = seal(e, prev)


def stored_runs(store: Store) -> int:
    try:
        return store.run("latest").id
    except RunNotFound:
        return 0


# --- encodings ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["identity", "gzip", "zstd"])
def test_batch_in_each_encoding_is_committed(api: Api, encoding: str) -> None:
    records = make_run(40)
    body = encode_batch(records)
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    r = api.post_body(body, **{"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json() == {"records": 42, "inserted": 40, "duplicates": 0}
    run = api.store.run("latest")
    assert (run.stored, run.emitted, run.status) == (40, 40, "successful")
    again = api.post_body(body, **{"Content-Encoding": encoding})
    assert again.json() == {"records": 42, "inserted": 0, "duplicates": 40}


def test_unknown_or_broken_encoding(api: Api) -> None:
    body = encode_batch(make_run(3))
    assert_error(api.post_body(body, **{"Content-Encoding": "br"}), 415, "unsupported_encoding")
    assert_error(api.post_body(body, **{"Content-Encoding": "gzip"}), 400, "bad_encoding")
    assert_error(api.post_body(body, **{"Content-Encoding": "zstd"}), 400, "bad_encoding")
    truncated = gzip.compress(body)[:-12]
    assert_error(api.post_body(truncated, **{"Content-Encoding": "gzip"}), 400, "bad_encoding")
    assert stored_runs(api.store) == 0


# --- strict validation, all or nothing --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[1,", b'{"kind": "event"}', b"null", b"\xff\xfe", b"[] []"],
)
def test_malformed_json_is_400(api: Api, body: bytes) -> None:
    assert_error(api.post_body(body), 400, "malformed_json")


def _dicts(n: int = 6) -> list[dict[str, Any]]:
    return [json.loads(encode_record(r)) for r in make_run(n)]


BAD_RECORDS: list[tuple[str, Any, str]] = [
    ("unknown field", lambda d: d.update(bogus=1), "unknown field `bogus`"),
    ("wrong type", lambda d: d.update(counter="3"), "$.counter"),
    ("bool as int", lambda d: d.update(changed=1), "$.changed"),
    ("missing field", lambda d: d.pop("uuid"), "missing required field `uuid`"),
    ("unknown kind", lambda d: d.update(kind="other"), "$.kind"),
    ("no kind", lambda d: d.pop("kind"), "missing required field `kind`"),
    ("counter 0", lambda d: d.update(counter=0), "counter must be >= 1"),
    ("negative counter", lambda d: d.update(counter=-4), "counter must be >= 1"),
    ("event_data array", lambda d: d.update(event_data=[1]), "event_data must be a JSON object"),
    ("empty run", lambda d: d.update(run=""), "run must not be empty"),
    ("null stdout", lambda d: d.update(stdout=None), "$.stdout"),
]


@pytest.mark.parametrize(("why", "spoil", "expected"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_one_bad_record_refuses_the_whole_batch_naming_it(
    api: Api, why: str, spoil: Any, expected: str
) -> None:
    records = _dicts()
    spoil(records[3])  # an event in the middle; the run start and end around it are valid
    r = api.post_body(json.dumps(records).encode())
    body = assert_error(r, 400, "invalid_batch")
    errors = cast(list[dict[str, Any]], body["errors"])
    assert [e["index"] for e in errors] == [3]
    assert expected in errors[0]["message"] or expected == errors[0]["field"]
    assert "1 of 8 records" in str(body["detail"])
    assert stored_runs(api.store) == 0, "nothing of a refused batch may be stored"


def test_every_bad_record_is_named(api: Api) -> None:
    records = _dicts(10)
    for i in (2, 5, 9):
        records[i]["counter"] = "x"
    records[0]["pid"] = "not an int"
    body = assert_error(api.post_body(json.dumps(records).encode()), 400, "invalid_batch")
    assert [e["index"] for e in body["errors"]] == [0, 2, 5, 9]  # type: ignore[attr-defined]


def test_end_record_must_be_sane(api: Api) -> None:
    records = _dicts(3)
    records[-1]["emitted"] = -1
    body = assert_error(api.post_body(json.dumps(records).encode()), 400, "invalid_batch")
    assert body["errors"][0]["index"] == len(records) - 1  # type: ignore[index]


def test_empty_batch_is_fine(api: Api) -> None:
    assert api.post_body(b"[]").json() == {"records": 0, "inserted": 0, "duplicates": 0}


# --- limits ------------------------------------------------------------------------------------


def test_batch_limits_are_413(api_store: Store) -> None:
    settings = ApiSettings(max_batch_records=50, max_batch_bytes=20_000)
    with running_api(api_store, settings) as a:
        assert_error(a.ingest(make_run(60)), 413, "batch_too_large")  # 62 records
        r = a.ingest(make_run(30)[:30])  # ~10 kB
        assert r.status_code == 200, r.text
        big = make_run(45)  # 47 records, ~28 kB > 20 kB
        assert_error(a.ingest(big), 413, "batch_too_large")
        assert a.store.run("latest").stored == 29


def test_a_five_megabyte_stdout_from_the_callback_is_stored(api: Api) -> None:
    records = make_run(4)
    huge = "x" * (5 << 20) + "\nend of output"
    events_of(records)[1].stdout = huge
    reseal(records)  # sealed like the callback seals: its hash recomputes
    for record in records:  # one record per batch, as the HTTP sink sends an oversized one
        r = api.ingest([record])
        assert r.status_code == 200, r.text
    run = api.store.run("latest")
    assert (run.stored, run.emitted) == (4, 4)
    page = api.get(f"/api/v1/runs/{run.id}/events?min_counter=2&max_counter=2").json()
    assert page["results"][0]["stdout"] == huge
    report = api.get(f"/api/v1/runs/{run.id}/verify").json()
    assert report["complete"] and report["chain_ok"]


def test_an_oversized_event_not_sealed_by_the_callback_is_refused(api: Api) -> None:
    records = make_run(3)
    events_of(records)[1].stdout = "y" * (2 << 20)  # changed after sealing: hash is stale
    body = assert_error(api.ingest(records), 400, "invalid_batch")
    item = body["errors"][0]  # type: ignore[index]
    assert item["index"] == 2 and "PLAYLEDGER_MAX_EVENT_BYTES" in item["message"]


def test_oversized_body_past_the_record_ceiling(api_store: Store) -> None:
    settings = ApiSettings(max_batch_bytes=10_000, max_record_bytes=100_000)
    with running_api(api_store, settings) as a:
        bomb = zstandard.ZstdCompressor().compress(b" " * 5_000_000)  # ~200 bytes on the wire
        assert_error(a.post_body(bomb, **{"Content-Encoding": "zstd"}), 413, "body_too_large")
        gz = gzip.compress(b" " * 5_000_000)
        assert_error(a.post_body(gz, **{"Content-Encoding": "gzip"}), 413, "body_too_large")
        assert_error(a.post_body(b"[" + b" " * 200_000 + b"]"), 413, "body_too_large")
        # between the batch limit and the ceiling: only as one record
        records = make_run(40)
        assert_error(a.ingest(records), 413, "batch_too_large")
        assert stored_runs(a.store) == 0
        assert a.app.state.playledger.gate.big_in_use is False


# --- durability and backpressure -------------------------------------------------------------


class GatedStore:
    """The real store, with ingest held until released (to watch what the server does while
    a commit is under way) or failing with a given error."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def ingest(self, records: Any) -> Any:
        return self.ingest_many([records])[0]

    def ingest_many(self, batches: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30), "test never released the gated store"
        if self.fail is not None:
            raise self.fail
        return self._store.ingest_many(batches)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def gated(api_store: Store) -> Iterator[tuple[Api, GatedStore]]:
    g = GatedStore(api_store)
    with running_api(cast(Store, g), ApiSettings(ingest_queue=1)) as a:
        yield a, g
        g.release.set()


def test_answer_only_after_commit_and_503_when_full(gated: tuple[Api, GatedStore]) -> None:
    api, store = gated
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(api.ingest(make_run(10))))
    first.start()
    assert store.entered.wait(10)
    time.sleep(0.2)
    assert answers == [], "answered before the store committed"
    assert stored_runs(api.store) == 0
    # the one in-flight slot is taken: refuse, do not buffer
    r = api.ingest(make_run(5))
    assert_error(r, 503, "busy")
    assert r.headers["retry-after"] == "1"
    metrics = api.get("/metrics").text
    assert "playledger_ingest_queue_depth 1.0" in metrics
    assert "playledger_ingest_throttled_total 1.0" in metrics
    store.release.set()
    first.join(10)
    assert answers and answers[0].status_code == 200
    assert api.store.run("latest").stored == 10
    assert "playledger_ingest_queue_depth 0.0" in api.get("/metrics").text


def test_store_busy_is_503_with_retry_after(gated: tuple[Api, GatedStore]) -> None:
    api, store = gated
    store.fail = StoreBusy("database is locked")
    store.release.set()
    r = api.ingest(make_run(3))
    assert_error(r, 503, "store_busy")
    assert r.headers["retry-after"] == "1"


def test_a_reused_run_id_is_a_409_conflict(api: Api) -> None:
    records = make_run(5)
    assert api.ingest(records).status_code == 200
    clash = make_run(5, run=records[0].run)  # same run id and counters, other events
    assert_error(api.ingest(clash), 409, "run_conflict")
    assert 'playledger_batches_rejected_total{reason="conflict"} 1.0' in api.get("/metrics").text


# --- the run endpoints ----------------------------------------------------------------------


def test_mark_aborted_and_exit_code(api: Api) -> None:
    records = make_run(5)
    run_uuid = records[0].run
    assert api.ingest(records[:-1]).status_code == 200  # no final record: ansible was killed
    h = api.auth("ingest")
    c = api.client
    assert c.post(f"/api/v1/runs/{run_uuid}/aborted", headers=h).status_code == 200
    assert api.store.run(run_uuid).status == "aborted"
    r = c.post(f"/api/v1/runs/{run_uuid}/exit-code", json={"exit_code": 137}, headers=h)
    assert r.status_code == 200 and api.store.run(run_uuid).exit_code == 137
    for bad in ({"exit_code": "1"}, {"exit_code": 1, "x": 2}, {}, [1]):
        r = c.post(f"/api/v1/runs/{run_uuid}/exit-code", json=bad, headers=h)
        assert_error(r, 400, "invalid_body")
    r = c.post("/api/v1/runs/nope/exit-code", json={"exit_code": 1}, headers=h)
    assert_error(r, 404, "not_found")
    read = api.auth("read")
    assert_error(c.post(f"/api/v1/runs/{run_uuid}/aborted", headers=read), 403, "forbidden")


def test_ingest_metrics(api: Api) -> None:
    records = make_run(20)
    api.ingest(records)
    api.ingest(records)
    bad = _dicts()
    bad[2]["counter"] = 0
    bad[4]["bogus"] = True
    api.post_body(json.dumps(bad).encode())
    text = api.get("/metrics").text
    assert "playledger_events_ingested_total 20.0" in text
    assert "playledger_events_duplicate_total 20.0" in text
    assert 'playledger_batches_rejected_total{reason="invalid"} 1.0' in text
    assert "playledger_records_quarantined_total 2.0" in text
    assert "playledger_events_dropped_total 0.0" in text
    assert "playledger_commit_seconds_count 2.0" in text
    pool = api.store.pool_stats()
    assert f"playledger_db_pool_size {float(pool.size)}" in text
    assert "playledger_db_pool_in_use " in text
    if isinstance(api.store, SQLiteStore):  # one writer connection, always open
        assert "playledger_db_pool_in_use 1.0" in text and "playledger_db_pool_size 1.0" in text


def test_run_lag_of_open_runs(api: Api) -> None:
    done = make_run(10)
    api.ingest(done)
    open_run = make_run(10)
    api.ingest([open_run[0], *open_run[1:4], *open_run[6:9]])  # 1-3 and 6-8 stored, running
    text = api.get("/metrics").text
    assert f'playledger_run_lag_events{{run="{open_run[0].run}"}} 2.0' in text
    assert done[0].run not in text
    api.ingest(open_run)
    assert open_run[0].run not in api.get("/metrics").text


def test_end_record_type(api: Api) -> None:
    # RunEnd with append_errors from the callback is accepted and counted
    records = make_run(3)
    end = records[-1]
    assert isinstance(end, RunEnd)
    records[-1] = RunEnd(end.run, end.created, end.emitted, append_errors=1)
    assert api.ingest(records).status_code == 200
    assert api.store.run("latest").append_errors == 1
