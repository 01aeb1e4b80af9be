"""AWX-compatible routes: the shapes Tower scripts read (`jq .status`, `jq .count`, ...)."""

from __future__ import annotations

import pytest

from apitest import Api
from factories import make_run
from playledger.events import Event
from test_api import assert_error

JOB_FIELDS = {
    "id", "type", "url", "related", "summary_fields", "created", "modified", "name",
    "playbook", "status", "failed", "started", "finished", "elapsed", "job_args", "job_cwd",
    "job_explanation", "execution_node", "result_traceback", "event_processing_finished",
    "emitted_events", "launch_type", "job_type", "artifacts", "job_template", "inventory",
}  # fmt: skip
EVENT_FIELDS = {
    "id", "type", "url", "related", "summary_fields", "created", "modified", "job", "event",
    "counter", "event_display", "event_data", "event_level", "failed", "changed", "uuid",
    "parent_uuid", "host", "host_name", "playbook", "play", "task", "role", "stdout",
    "start_line", "end_line", "verbosity",
}  # fmt: skip
SUMMARY_FIELDS = {
    "id", "type", "url", "related", "summary_fields", "created", "modified", "job", "host",
    "host_name", "changed", "dark", "failures", "ok", "processed", "skipped", "failed",
    "ignored", "rescued",
}  # fmt: skip


@pytest.fixture
def job(api: Api) -> tuple[Api, list[Event]]:
    records = make_run(120, hosts=4)
    api.ingest(records)
    return api, [r for r in records if isinstance(r, Event)]


def test_job_detail_status_polling(job: tuple[Api, list[Event]]) -> None:
    api, _ = job
    body = api.get("/api/v2/jobs/1/").json()  # curl .../jobs/1/ | jq .status
    assert set(body) >= JOB_FIELDS
    assert body["status"] == "successful" and body["failed"] is False
    assert body["type"] == "job" and body["id"] == 1 and body["url"] == "/api/v2/jobs/1/"
    assert body["emitted_events"] == 120 and body["event_processing_finished"] is True
    assert body["related"]["job_events"] == "/api/v2/jobs/1/job_events/"
    assert body["elapsed"] == 2.0 and body["name"] == "site.yml"
    assert api.get("/api/v2/jobs/1/?format=json").json() == body
    assert_error(api.get("/api/v2/jobs/1/?format=yaml"), 400, "invalid_parameter")


def test_job_status_while_running_and_when_aborted(api: Api) -> None:
    records = make_run(30)
    api.ingest(records[:10])
    body = api.get("/api/v2/jobs/1/").json()
    assert body["status"] == "running" and body["event_processing_finished"] is False
    assert body["emitted_events"] == 0
    api.client.post(f"/api/v1/runs/{records[0].run}/aborted", headers=api.auth("ingest"))
    body = api.get("/api/v2/jobs/1/").json()
    assert body["status"] == "error" and body["failed"] is True
    assert body["event_processing_finished"] is True


def test_job_events_counting(job: tuple[Api, list[Event]]) -> None:
    api, events = job
    page = api.get("/api/v2/jobs/1/job_events/?page_size=1").json()  # ... | jq .count
    assert set(page) == {"count", "next", "previous", "results"}
    assert page["count"] == 120 and len(page["results"]) == 1
    assert page["next"] == "/api/v2/jobs/1/job_events/?page_size=1&page=2"
    assert page["previous"] is None
    event = page["results"][0]
    assert set(event) >= EVENT_FIELDS
    assert event["counter"] == 1 and event["job"] == 1 and event["uuid"] == events[0].uuid
    assert event["event"] == "playbook_on_play_start" and event["event_level"] == 1
    assert isinstance(event["event_data"], dict) and event["host_name"] == ""
    alias = api.get("/api/v2/jobs/1/events/?page_size=1&format=json").json()
    assert alias["count"] == 120 and alias["results"][0]["uuid"] == event["uuid"]
    failed = api.get("/api/v2/jobs/1/job_events/?event=runner_on_failed").json()
    assert failed["count"] == sum(1 for e in events if e.event == "runner_on_failed")
    assert all(r["failed"] for r in failed["results"])
    on_host = api.get("/api/v2/jobs/1/job_events/?host_name=host-1&failed=false").json()
    assert on_host["count"] == sum(1 for e in events if e.host == "host-1" and not e.failed)
    assert {r["host_name"] for r in on_host["results"]} == {"host-1"}
    wanted = [e.counter for e in events if "host-1" in e.stdout.lower()]
    assert wanted, "the fixture has output naming host-1"
    grep = api.get("/api/v2/jobs/1/job_events/?stdout__icontains=HOST-1&page_size=200").json()
    assert [r["counter"] for r in grep["results"]] == wanted and grep["count"] == len(wanted)


def test_job_events_pages(job: tuple[Api, list[Event]]) -> None:
    api, _ = job
    counters: list[int] = []
    url: str | None = "/api/v2/jobs/1/job_events/?page_size=50"
    for _ in range(5):
        if url is None:
            break
        page = api.get(url).json()
        counters += [r["counter"] for r in page["results"]]
        url = page["next"]
    assert counters == list(range(1, 121))
    third = api.get("/api/v2/jobs/1/job_events/?page_size=50&page=3").json()
    assert third["previous"] == "/api/v2/jobs/1/job_events/?page_size=50&page=2"
    assert third["next"] is None and len(third["results"]) == 20
    ranged = api.get("/api/v2/jobs/1/job_events/?counter__gt=100&counter__lte=105").json()
    assert [r["counter"] for r in ranged["results"]] == [101, 102, 103, 104, 105]
    assert ranged["count"] == 5
    deep = api.get("/api/v2/jobs/1/job_events/?counter__gte=10&page_size=5&page=3").json()
    assert [r["counter"] for r in deep["results"]] == [20, 21, 22, 23, 24]


def test_page_size_is_clamped_to_200_as_awx_does(api: Api) -> None:
    api.ingest(make_run(250))
    page = api.get("/api/v2/jobs/1/job_events/?page_size=500").json()
    assert len(page["results"]) == 200 and page["count"] == 250
    assert page["next"] == "/api/v2/jobs/1/job_events/?page_size=500&page=2"
    rest = api.get(page["next"]).json()
    assert [r["counter"] for r in rest["results"]] == list(range(201, 251))


def test_job_events_lines(job: tuple[Api, list[Event]]) -> None:
    api, events = job
    results = api.get("/api/v2/jobs/1/job_events/?page_size=200").json()["results"]
    line = 0
    for r, e in zip(results, events, strict=True):
        assert r["start_line"] == line, r["counter"]
        line += e.stdout.count("\n") + 1 if e.stdout else 0
        assert r["end_line"] == line
    page = api.get("/api/v2/jobs/1/job_events/?host_name=host-2&page_size=3&page=2").json()
    for r in page["results"]:
        assert r["start_line"] == results[r["counter"] - 1]["start_line"]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("page=0", 400),
        ("page=abc", 400),
        ("page_size=0", 400),
        ("page_size=-5", 400),
        ("page=99", 404),
        ("order_by=-created", 400),
        ("event__startswith=runner", 400),
        ("failed=sometimes", 400),
    ],
)
def test_job_events_bad_parameters(job: tuple[Api, list[Event]], query: str, status: int) -> None:
    api, _ = job
    r = api.get(f"/api/v2/jobs/1/job_events/?{query}")
    body = assert_error(r, status, r.json()["code"])
    if status == 404:
        assert body["detail"] == "Invalid page."


def test_host_summaries(job: tuple[Api, list[Event]]) -> None:
    api, _ = job
    page = api.get("/api/v2/jobs/1/job_host_summaries/").json()
    assert page["count"] == 4 and page["next"] is None
    row = page["results"][0]
    assert set(row) >= SUMMARY_FIELDS
    assert (row["host_name"], row["ok"], row["failures"], row["failed"]) == ("host-0", 1, 0, False)
    one = api.get("/api/v2/jobs/1/job_host_summaries/?host_name=host-3").json()
    assert [r["host_name"] for r in one["results"]] == ["host-3"]
    paged = api.get("/api/v2/jobs/1/job_host_summaries/?page_size=3&page=2").json()
    assert len(paged["results"]) == 1 and paged["previous"] is not None


def test_stdout_formats(job: tuple[Api, list[Event]]) -> None:
    api, events = job
    expected = "".join(e.stdout + "\n" for e in events if e.stdout)
    txt = api.get("/api/v2/jobs/1/stdout/?format=txt")
    assert txt.headers["content-type"].startswith("text/plain") and txt.text == expected
    as_json = api.get("/api/v2/jobs/1/stdout/?format=json").json()
    assert as_json["content"] == expected and as_json["range"]["end"] == expected.count("\n")
    assert api.get("/api/v2/jobs/1/stdout/").json()["content"] == expected
    download = api.get("/api/v2/jobs/1/stdout/?format=txt_download")
    assert download.headers["content-disposition"] == 'attachment; filename="job_1.txt"'
    assert "\x1b[" in api.get("/api/v2/jobs/1/stdout/?format=ansi").text
    assert "<pre>" in api.get("/api/v2/jobs/1/stdout/?format=html").text
    assert_error(api.get("/api/v2/jobs/1/stdout/?format=docx"), 400, "invalid_parameter")


def test_metrics_text_and_json(job: tuple[Api, list[Event]]) -> None:
    api, _ = job
    text = api.get("/api/v2/metrics/")
    assert text.headers["content-type"].startswith("text/plain")
    assert "playledger_events_ingested_total 120.0" in text.text
    body = api.get("/api/v2/metrics/?format=json").json()
    assert body["event_queue_size"]["samples"][0]["value"] == 0
    assert body["playledger_events_ingested"]["type"] == "counter"
    assert body["playledger_events_ingested"]["samples"][0]["value"] == 120
    accept = api.get("/api/v2/metrics/", headers={"Accept": "application/json"}).json()
    assert "event_queue_size" in accept
    assert_error(api.get("/api/v2/metrics/?format=yaml"), 400, "invalid_parameter")
    assert_error(api.client.get("/api/v2/metrics/"), 401, "unauthorized")
