"""The v1 read API: runs, one run, events (filters, keyset pages, count), host summaries, job
output in three formats, the verify report and the live stream."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from apitest import Api, running_api
from factories import make_run, run_start
from playledger.api.output import ansi_to_html
from playledger.api.settings import ApiSettings
from playledger.events import Event, RunEnd, RunStart
from playledger.store import Store
from test_api import assert_error


def events_of(records: list[RunStart | Event | RunEnd]) -> list[Event]:
    return [r for r in records if isinstance(r, Event)]


@pytest.fixture
def three_runs(api: Api) -> Api:
    api.ingest(make_run(30))
    api.ingest(make_run(120, hosts=5))
    run_c = str(uuid.uuid4())  # another playbook, 9 events so far: still running
    api.ingest([run_start(run_c, playbook="deploy/other.yml"), *make_run(40, run=run_c)[1:10]])
    return api


# --- runs -------------------------------------------------------------------------------------


def test_runs_list_and_filters(three_runs: Api) -> None:
    api = three_runs
    all_runs = api.get("/api/v1/runs").json()
    assert all_runs["count"] == 3 and all_runs["next"] is None
    assert [r["id"] for r in all_runs["results"]] == [3, 2, 1]
    running = api.get("/api/v1/runs?status=running").json()
    assert [r["id"] for r in running["results"]] == [3] and running["count"] == 1
    assert api.get("/api/v1/runs?status=successful").json()["count"] == 2
    other = api.get("/api/v1/runs?playbook=other").json()
    assert [r["playbook"] for r in other["results"]] == ["deploy/other.yml"]
    assert api.get("/api/v1/runs?since=2026-12-04T00:00:00Z").json()["count"] == 3
    assert api.get("/api/v1/runs?since=2026-12-05T00:00:00Z").json()["count"] == 0
    assert api.get("/api/v1/runs?until=2026-12-05T00:00:00%2B01:00").json()["count"] == 3
    assert api.get("/api/v1/runs?until=2026-12-03").json()["count"] == 0


def test_runs_keyset_pages(three_runs: Api) -> None:
    api = three_runs
    seen: list[int] = []
    url: str | None = "/api/v1/runs?page_size=2"
    for _ in range(5):
        if url is None:
            break
        page = api.get(url).json()
        assert page["count"] == 3
        seen += [r["id"] for r in page["results"]]
        url = page["next"]
    assert seen == [3, 2, 1] and url is None


@pytest.mark.parametrize(
    "query",
    [
        "page_size=0",
        "page_size=-1",
        "page_size=201",
        "page_size=abc",
        "page_size=1.5",
        "before=0",
        "before=x",
        "since=yesterday",
        "status=exploded",
        "page=2",
    ],
)
def test_runs_bad_parameters(api: Api, query: str) -> None:
    r = api.get(f"/api/v1/runs?{query}")
    body = assert_error(r, 400, r.json()["code"])
    assert body["code"] in ("invalid_parameter", "unknown_parameter")
    assert body["errors"], body


def test_one_run(three_runs: Api) -> None:
    api = three_runs
    run = api.get("/api/v1/runs/2").json()
    assert run["status"] == "successful"
    assert (run["emitted"], run["stored"], run["complete"], run["lag"]) == (120, 120, True, 0)
    assert run["host_counts"] == {"total": 5, "ok": 5, "changed": 0, "failed": 0, "unreachable": 0}
    assert run["hosts"] == 5 and run["elapsed"] == 2.0
    assert run["links"]["events"] == "/api/v1/runs/2/events"
    by_uuid = api.get(f"/api/v1/runs/{run['uuid']}").json()
    assert by_uuid["id"] == 2
    open_run = api.get("/api/v1/runs/3").json()
    assert open_run["complete"] is False and open_run["emitted"] is None
    assert open_run["host_counts"] is None and open_run["lag"] is None
    assert open_run["hosts"] == 3  # before the recap: distinct hosts with events
    assert api.get("/api/v1/runs/latest").json()["id"] == 3
    assert_error(api.get("/api/v1/runs/4"), 404, "not_found")


# --- events -----------------------------------------------------------------------------------


@pytest.fixture
def one_run(api: Api) -> tuple[Api, list[Event]]:
    records = make_run(500, hosts=4)
    api.ingest(records)
    return api, events_of(records)


def test_events_page_and_count(one_run: tuple[Api, list[Event]]) -> None:
    api, events = one_run
    page = api.get("/api/v1/runs/1/events?page_size=200").json()
    assert page["count"] == 500 and len(page["results"]) == 200
    assert page["results"][0] == json.loads(json.dumps(page["results"][0]))
    first = page["results"][0]
    assert first["kind"] == "event" and first["counter"] == 1
    assert first["uuid"] == events[0].uuid and first["hash"] == events[0].hash
    assert isinstance(first["event_data"], dict)
    # follow `next` to the end: every event once, in order
    counters = [e["counter"] for e in page["results"]]
    url = page["next"]
    for _ in range(10):
        if url is None:
            break
        page = api.get(url).json()
        counters += [e["counter"] for e in page["results"]]
        url = page["next"]
    assert counters == list(range(1, 501))


FILTERS: list[tuple[str, Any]] = [
    ("host=host-1", lambda e: e.host == "host-1"),
    ("event=runner_on_failed", lambda e: e.event == "runner_on_failed"),
    ("task=task%202", lambda e: e.task == "task 2"),
    ("task=t-3", lambda e: e.task_uuid == "t-3"),
    ("failed=true", lambda e: e.failed),
    ("failed=false", lambda e: not e.failed),
    ("changed=1", lambda e: e.changed),
    ("min_counter=100&max_counter=149", lambda e: 100 <= e.counter <= 149),
    ("text=OK:%20%5BHOST-1%5D", lambda e: e.stdout == "ok: [host-1]"),
    ("text=%5Bhost-3&failed=true", lambda e: e.host == "host-3" and e.failed),
    (
        "host=host-2&changed=true&failed=false",
        lambda e: e.host == "host-2" and e.changed and not e.failed,
    ),
]


@pytest.mark.parametrize(("query", "match"), FILTERS, ids=[f[0] for f in FILTERS])
def test_event_filters(one_run: tuple[Api, list[Event]], query: str, match: Any) -> None:
    api, events = one_run
    expected = [e.counter for e in events if match(e)]
    page = api.get(f"/api/v1/runs/1/events?{query}&page_size=1000").json()
    assert page["count"] == len(expected) > 0
    assert [e["counter"] for e in page["results"]] == expected
    small = api.get(f"/api/v1/runs/1/events?{query}&page_size=3&after=10").json()
    assert [e["counter"] for e in small["results"]] == [c for c in expected if c > 10][:3]
    assert small["count"] == len(expected)  # the total, whatever the cursor


def test_events_text_filter_is_literal(one_run: tuple[Api, list[Event]]) -> None:
    api, events = one_run
    assert api.get("/api/v1/runs/1/events?text=").json()["count"] == 500  # empty: no filter
    host_1 = sum(1 for e in events if e.stdout == "ok: [host-1]")
    assert host_1 > 0
    for literal, expected in (("%", 0), ("_", 0), ("ok: [host-1]", host_1)):
        page = api.get("/api/v1/runs/1/events", params={"text": literal}).json()
        assert page["count"] == expected, literal  # % and _ are no wildcards
    spec = api.client.get("/api/v1/openapi.json").json()
    params = spec["paths"]["/api/v1/runs/{run_ref}/events"]["get"]["parameters"]
    text = next(p for p in params if p["name"] == "text")
    assert "Case-insensitive substring of the event's stdout" in text["description"]


def test_events_count_can_be_skipped(one_run: tuple[Api, list[Event]]) -> None:
    api, _ = one_run
    assert api.get("/api/v1/runs/1/events?count=false&page_size=1").json()["count"] is None


@pytest.mark.parametrize(
    "query",
    [
        "page_size=0",
        "page_size=1001",
        "page_size=ten",
        "after=-1",
        "min_counter=0",
        "failed=maybe",
        "count=perhaps",
        "hostname=x",
        "page=2",
    ],
)
def test_events_bad_parameters(one_run: tuple[Api, list[Event]], query: str) -> None:
    api, _ = one_run
    r = api.get(f"/api/v1/runs/1/events?{query}")
    assert r.status_code == 400
    assert_error(r, 400, r.json()["code"])


# --- host summaries, output, verify -----------------------------------------------------------


def test_host_summaries(one_run: tuple[Api, list[Event]]) -> None:
    api, _ = one_run
    hosts = api.get("/api/v1/runs/1/hosts").json()
    assert hosts["count"] == 4
    assert hosts["results"][0] == {
        "host": "host-0",
        "ok": 1,
        "changed": 0,
        "failures": 0,
        "dark": 0,
        "skipped": 0,
        "rescued": 0,
        "ignored": 0,
        "failed": False,
    }


def test_host_summaries_before_the_recap(api: Api) -> None:
    api.ingest(make_run(10)[:5])
    assert_error(api.get("/api/v1/runs/1/hosts"), 404, "no_host_summary")


def test_host_runs(api: Api) -> None:
    """A host's runs, newest first: from the recaps, and from the events of runs without one."""
    api.ingest(make_run(20, hosts=4))  # 1: host-3 in the recap
    for _ in range(3):
        api.ingest(make_run(10, hosts=2))  # 2..4: host-0 and host-1 only
    open_run = make_run(20, hosts=4)
    api.ingest(open_run[:8])  # 5: still running; host-3 has events (counters 3 and 7)
    body = api.get("/api/v1/hosts/host-3/runs").json()
    assert body["next"] is None
    assert [(r["run"]["id"], r["source"]) for r in body["results"]] == [(5, "events"), (1, "recap")]
    running, recap = body["results"]
    assert running["summary"] is None and running["run"]["status"] == "running"
    assert running["run"]["complete"] is False
    assert recap["summary"] == {"host": "host-3", "ok": 1, "changed": 0, "failures": 0,
                                "dark": 0, "skipped": 0, "rescued": 0, "ignored": 0,
                                "failed": False}  # fmt: skip
    assert recap["run"]["links"]["self"] == "/api/v1/runs/1"
    # keyset pages over host-0's five runs
    seen: list[int] = []
    url: str | None = "/api/v1/hosts/host-0/runs?page_size=2"
    for _ in range(5):
        if url is None:
            break
        page = api.get(url).json()
        seen += [r["run"]["id"] for r in page["results"]]
        url = page["next"]
    assert seen == [5, 4, 3, 2, 1] and url is None
    assert api.get("/api/v1/hosts/nobody/runs").json() == {"next": None, "results": []}
    assert_error(api.get("/api/v1/hosts/host-3/runs?page_size=0"), 400, "invalid_parameter")
    assert_error(api.get("/api/v1/hosts/host-3/runs?limit=5"), 400, "unknown_parameter")
    assert api.client.get("/api/v1/hosts/host-3/runs").status_code == 401


def test_job_output_formats(one_run: tuple[Api, list[Event]]) -> None:
    api, events = one_run
    text = api.get("/api/v1/runs/1/stdout").text
    expected = "".join(e.stdout + "\n" for e in events if e.stdout)
    assert text == expected
    assert api.get("/api/v1/runs/1/stdout?format=text").text == expected
    ansi = api.get("/api/v1/runs/1/stdout?format=ansi").text
    assert "\x1b[31m" in ansi and ansi.replace("\x1b[31m", "").count("ok: [") == text.count("ok: [")
    page = api.get("/api/v1/runs/1/stdout?format=html")
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!doctype html>") and page.text.rstrip().endswith("</html>")
    assert '<span class="sgr-31">' in page.text and "\x1b" not in page.text
    assert_error(api.get("/api/v1/runs/1/stdout?format=pdf"), 400, "invalid_parameter")


def test_ansi_to_html_escapes() -> None:
    assert ansi_to_html("<b>&\x1b[1;31mred\x1b[0m") == (
        '&lt;b&gt;&amp;<span class="sgr-1 sgr-31">red</span>'
    )
    assert ansi_to_html("\x1b[32munclosed") == '<span class="sgr-32">unclosed</span>'


def test_verify_report(one_run: tuple[Api, list[Event]], api_store: Store) -> None:
    api, _ = one_run
    report = api.get("/api/v1/runs/1/verify").json()
    assert report["complete"] is True and report["chain_ok"] is True
    assert (report["emitted"], report["stored"], report["hosts"]) == (500, 500, 4)
    partial = make_run(50)
    api.ingest([*partial[:20], *partial[30:]])
    gaps = api.get("/api/v1/runs/2/verify").json()
    assert gaps["complete"] is False and gaps["missing"] == [[20, 29]]


# --- live stream --------------------------------------------------------------------------------


def _sse(text: str) -> list[tuple[str, dict[str, Any], str | None]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
    return out


def test_stream_of_a_finished_run_ends(one_run: tuple[Api, list[Event]]) -> None:
    api, _ = one_run
    r = api.get("/api/v1/runs/1/events/stream")
    assert r.headers["content-type"].startswith("text/event-stream")
    messages = _sse(r.text)
    assert [m[1]["counter"] for m in messages[:-1]] == list(range(1, 501))
    assert [m[2] for m in messages[:3]] == ["1", "2", "3"]
    kind, end, _ = messages[-1]
    assert kind == "end" and end["stored"] == 500 and end["last_counter"] == 500
    resumed = _sse(api.get("/api/v1/runs/1/events/stream?after=495").text)
    assert [m[1].get("counter") for m in resumed] == [496, 497, 498, 499, 500, None]
    header = api.get("/api/v1/runs/1/events/stream", headers={"Last-Event-ID": "498"}).text
    assert [m[1].get("counter") for m in _sse(header)] == [499, 500, None]


@pytest.fixture
def live_api(api_store: Store) -> Iterator[Api]:
    with running_api(api_store, ApiSettings(stream_poll=0.05)) as a:
        yield a


def test_stream_follows_a_run_as_it_is_stored(live_api: Api) -> None:
    api = live_api
    records = make_run(60)
    api.ingest(records[:11])  # start + 10 events

    def feed() -> None:
        for i in range(11, len(records), 10):
            time.sleep(0.1)
            api.ingest(records[i : i + 10])

    feeder = threading.Thread(target=feed)
    feeder.start()
    r = api.get("/api/v1/runs/1/events/stream", timeout=30)
    feeder.join(10)
    messages = _sse(r.text)
    assert [m[1]["counter"] for m in messages if m[0] == "event"] == list(range(1, 61))
    assert messages[-1][0] == "end" and messages[-1][1]["status"] == "successful"


def test_stream_of_an_aborted_run_ends(live_api: Api) -> None:
    api = live_api
    records = make_run(10)
    api.ingest(records[:6])
    api.client.post(f"/api/v1/runs/{records[0].run}/aborted", headers=api.auth("ingest"))
    messages = _sse(api.get("/api/v1/runs/1/events/stream", timeout=30).text)
    assert messages[-1][0] == "end" and messages[-1][1]["status"] == "aborted"
    assert len(messages) == 6
