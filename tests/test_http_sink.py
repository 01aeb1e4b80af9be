"""The HTTP sink against the real app in process (and, for the retry logic, scripted answers),
and the shipper quarantining what the server refuses while shipping the rest."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apitest import in_process
from factories import make_run
from playledger.api.app import create_app
from playledger.api.settings import ApiSettings
from playledger.errors import BatchRejected, RunConflict, SettingError, StoreBusy, StoreError
from playledger.events import Event, RunEnd, encode_record
from playledger.settings import Settings
from playledger.shipper import ship_spool
from playledger.sinks import open_sink
from playledger.sinks.http import HttpSink
from playledger.spool import SpoolFile, SpoolWriter
from playledger.store import Store
from playledger.store.sqlite import SQLiteStore
from playledger.tokens import create_token


class Sent:
    """Request headers seen by the client (an httpx event hook)."""

    def __init__(self) -> None:
        self.encodings: list[str | None] = []

    def __call__(self, request: httpx.Request) -> None:
        if request.url.path == "/api/v1/ingest":
            self.encodings.append(request.headers.get("content-encoding"))


def sink_for(
    store: Store, settings: ApiSettings | None = None, scope: str = "ingest"
) -> Iterator[tuple[HttpSink, Sent]]:
    token = create_token(store, f"sink-{scope}", scope)[0]
    app = create_app(store, settings or ApiSettings())
    sent = Sent()
    with in_process(app) as client:
        client.event_hooks["request"].append(sent)
        sink = HttpSink("http://testserver", token, client=client, sleep=lambda s: None)
        yield sink, sent


@pytest.fixture
def sink(api_store: Store) -> Iterator[tuple[HttpSink, Sent]]:
    yield from sink_for(api_store)


def test_ingest_verify_exit_code(sink: tuple[HttpSink, Sent], api_store: Store) -> None:
    http, sent = sink
    records = make_run(300)
    result = http.ingest(records)
    assert (result.inserted, result.duplicates) == (300, 0)
    assert sent.encodings == ["zstd"]  # compressed on the wire
    again = http.ingest(records[100:200])
    assert (again.inserted, again.duplicates) == (0, 100)
    http.set_exit_code(records[0].run, 2)
    assert api_store.run("latest").exit_code == 2
    report = http.verify(records[0].run)
    assert report["complete"] is True and report["stored"] == 300 and report["hosts"] == 3
    small = make_run(1)
    http.ingest(small[:1])
    assert sent.encodings[-1] is None  # tiny bodies go uncompressed


def test_mark_aborted(sink: tuple[HttpSink, Sent], api_store: Store) -> None:
    http, _ = sink
    records = make_run(5)
    http.ingest(records[:-1])
    http.mark_aborted(records[0].run)
    assert api_store.run("latest").status == "aborted"


def test_too_large_batches_are_split(api_store: Store) -> None:
    for http, _ in sink_for(api_store, ApiSettings(max_batch_records=7)):
        result = http.ingest(make_run(40))
        assert (result.inserted, result.duplicates) == (40, 0)
        assert api_store.run("latest").stored == 40


def _with_bad(n: int, bad_at: list[int]) -> list[Event | RunEnd]:
    records = make_run(n)[1:]  # events and the end record
    for i in bad_at:
        event = records[i]
        assert isinstance(event, Event)
        event.counter = 0
    return records  # type: ignore[return-value]


def test_refused_records_are_named_by_index(sink: tuple[HttpSink, Sent]) -> None:
    http, _ = sink
    with pytest.raises(BatchRejected) as caught:
        http.ingest(_with_bad(10, [2, 6]))
    assert set(caught.value.rejected) == {2, 6}
    assert "counter must be >= 1" in caught.value.rejected[2]


def test_indexes_survive_splitting(api_store: Store) -> None:
    for http, _ in sink_for(api_store, ApiSettings(max_batch_records=3)):
        with pytest.raises(BatchRejected) as caught:
            http.ingest(_with_bad(12, [8]))
        assert set(caught.value.rejected) == {8}


def test_wrong_token_or_scope_is_not_busy(api_store: Store) -> None:
    for http, _ in sink_for(api_store, scope="read"):
        with pytest.raises(StoreError, match="PLAYLEDGER_TOKEN") as caught:
            http.ingest(make_run(3))
        assert not isinstance(caught.value, StoreBusy)


def test_conflict(sink: tuple[HttpSink, Sent]) -> None:
    http, _ = sink
    records = make_run(4)
    http.ingest(records)
    with pytest.raises(RunConflict):
        http.ingest(make_run(4, run=records[0].run))


# --- retries (scripted answers: the logic, not the server) -----------------------------------


def scripted(answers: list[httpx.Response | Exception]) -> tuple[HttpSink, list[float]]:
    sleeps: list[float] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://server")
    return HttpSink(
        "http://server", "t", client=client, sleep=sleeps.append, jitter=lambda: 0.0
    ), sleeps


OK = httpx.Response(200, json={"records": 5, "inserted": 3, "duplicates": 0})


def test_retry_after_is_honoured() -> None:
    busy = httpx.Response(503, headers={"Retry-After": "7"}, json={"detail": "busy"})
    http, sleeps = scripted([busy, busy, OK])
    assert http.ingest(make_run(3)).inserted == 3
    assert sleeps == [7.0, 7.0]


def test_backoff_grows_then_store_busy() -> None:
    down = httpx.ConnectError("connection refused")
    http, sleeps = scripted([down, httpx.Response(502), down])
    with pytest.raises(StoreBusy, match="cannot reach"):
        http.ingest(make_run(3))
    assert sleeps == [0.1, 0.2]


def test_jitter_spreads_retries() -> None:
    sleeps: list[float] = []
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(429)), base_url="http://s"
    )
    http = HttpSink("http://s", "t", client=client, sleep=sleeps.append, jitter=lambda: 1.0)
    with pytest.raises(StoreBusy, match="429"):
        http.ingest(make_run(2))
    assert sleeps == [0.15000000000000002, 0.30000000000000004]


def test_server_not_listening_is_busy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    http = HttpSink(f"http://127.0.0.1:{port}", "t", timeout=2, sleep=lambda s: None)
    try:
        with pytest.raises(StoreBusy, match="cannot reach"):
            http.ingest(make_run(2))
    finally:
        http.close()


# --- the shipper with an HTTP sink -------------------------------------------------------------


def test_shipper_quarantines_refused_records_and_ships_the_rest(
    sink: tuple[HttpSink, Sent], api_store: Store, tmp_path: Path
) -> None:
    http, _ = sink
    records = make_run(6)
    bad = records[3]
    assert isinstance(bad, Event)
    refused = Event(**{**{f: getattr(bad, f) for f in Event.__struct_fields__}, "counter": 0})
    spool_dir = tmp_path / "spool"
    run = records[0].run
    writer = SpoolWriter(spool_dir / f"{run}.spool", fsync="never")
    for record in [*records[:3], refused, *records[3:]]:
        writer.append(encode_record(record))
    writer.close()

    report = ship_spool(SpoolFile(spool_dir, run), http, batch_size=100, timeout=5)
    assert report.finished and report.inserted == 6
    assert len(report.quarantined) == 1
    assert report.quarantined[0].reason.startswith("refused by the sink: counter must be >= 1")
    stored = api_store.run(run)
    assert (stored.stored, stored.emitted) == (6, 6)
    entries = SpoolFile(spool_dir, run).quarantined()
    assert len(entries) == 1 and "refused by the sink" in str(entries[0]["reason"])


# --- configuration ----------------------------------------------------------------------------


def test_open_sink(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    direct = open_sink(Settings.load(environ={"PLAYLEDGER_DB": db}))
    assert isinstance(direct, SQLiteStore)
    direct.close()
    remote = open_sink(
        Settings.load(environ={"PLAYLEDGER_SINK": "http://127.0.0.1:9/", "PLAYLEDGER_TOKEN": "t"})
    )
    assert isinstance(remote, HttpSink) and remote.url == "http://127.0.0.1:9"
    remote.close()
    with pytest.raises(SettingError, match="PLAYLEDGER_SINK"):
        Settings.load(environ={"PLAYLEDGER_SINK": "ftp://host"})
