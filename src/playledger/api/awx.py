"""AWX/Tower-compatible routes with AWX's response shapes, so existing scripts work unchanged.

A playledger run is an AWX job: its numeric id is the job id. Field names follow AWX's
JobSerializer, JobEventSerializer and JobHostSummarySerializer; fields with no playledger
meaning (inventory, project, credentials, ...) are present with AWX's empty values.
Pagination is AWX's: `page` / `page_size` (at most 200), `count` / `next` / `previous` /
`results`, relative URLs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from playledger.api.auth import require
from playledger.api.output import job_output
from playledger.api.schema import ApiError, ErrorItem, json_response
from playledger.api.state import state
from playledger.api.v1 import elapsed, known_query
from playledger.events import Event
from playledger.store.base import EventFilter, HostSummary, RunRow

READ = Depends(require("read"))
MAX_PAGE_SIZE = 200  # AWX's MAX_PAGE_SIZE: larger values are clamped, as AWX does
STDOUT_MAX_DISPLAY = 1 << 20  # AWX's STDOUT_MAX_BYTES_DISPLAY for the json/html formats

STATUS = {"running": "running", "successful": "successful", "failed": "failed", "aborted": "error"}

EVENT_DISPLAY = {
    "playbook_on_start": "Playbook Started",
    "playbook_on_play_start": "Play Started",
    "playbook_on_task_start": "Task Started",
    "playbook_on_handler_task_start": "Handler Task Started",
    "playbook_on_include": "Including File",
    "playbook_on_notify": "Running Handlers",
    "playbook_on_no_hosts_matched": "No Hosts Matched",
    "playbook_on_no_hosts_remaining": "No Hosts Remaining",
    "playbook_on_vars_prompt": "Variables Prompted",
    "playbook_on_stats": "Playbook Complete",
    "runner_on_start": "Host Started",
    "runner_on_ok": "Host OK",
    "runner_on_failed": "Host Failed",
    "runner_on_skipped": "Host Skipped",
    "runner_on_unreachable": "Host Unreachable",
    "runner_on_async_poll": "Host Polling",
    "runner_on_async_ok": "Host Async OK",
    "runner_on_async_failed": "Host Async Failure",
    "runner_item_on_ok": "Item OK",
    "runner_item_on_failed": "Item Failed",
    "runner_item_on_skipped": "Item Skipped",
    "runner_retry": "Host Retry",
    "runner_on_file_diff": "File Difference",
    "verbose": "Verbose",
    "warning": "Warning",
    "deprecated": "Deprecated",
    "debug": "Debug",
    "error": "Error",
}
LEVEL_1 = frozenset({"playbook_on_play_start", "playbook_on_no_hosts_matched"})
LEVEL_2 = frozenset(
    {
        "playbook_on_task_start",
        "playbook_on_handler_task_start",
        "playbook_on_include",
        "playbook_on_notify",
        "playbook_on_no_hosts_remaining",
    }
)

router = APIRouter(tags=["AWX-compatible"], dependencies=[Depends(known_query)])


def _job(request: Request, job_id: int) -> RunRow:
    return state(request).store.run(str(job_id))


def job_url(job_id: int) -> str:
    return f"/api/v2/jobs/{job_id}/"


def event_processing_finished(run: RunRow) -> bool:
    """AWX: every event the job emitted is saved. An aborted run's spool was fully drained."""
    if run.status == "aborted":
        return True
    return run.emitted is not None and run.stored >= run.emitted


def job(run: RunRow) -> dict[str, Any]:
    status = STATUS.get(run.status, run.status)
    url = job_url(run.id)
    return {
        "id": run.id,
        "type": "job",
        "url": url,
        "related": {
            "job_events": f"{url}job_events/",
            "job_host_summaries": f"{url}job_host_summaries/",
            "stdout": f"{url}stdout/",
        },
        "summary_fields": {},
        "created": run.started,
        "modified": run.finished or run.started,
        "name": Path(run.playbook).name,
        "description": "",
        "job_type": "run",
        "inventory": None,
        "project": None,
        "playbook": run.playbook,
        "scm_branch": "",
        "forks": 0,
        "limit": "",
        "verbosity": 0,
        "extra_vars": "{}",
        "job_tags": "",
        "force_handlers": False,
        "skip_tags": "",
        "start_at_task": "",
        "timeout": 0,
        "use_fact_cache": False,
        "organization": None,
        "unified_job_template": None,
        "launch_type": "manual",
        "status": status,
        "execution_environment": None,
        "failed": status in ("failed", "error"),
        "started": run.started or None,
        "finished": run.finished,
        "canceled_on": None,
        "elapsed": elapsed(run) or 0.0,
        "job_args": json.dumps(run.argv),
        "job_cwd": run.cwd,
        "job_env": {},
        "job_explanation": "",
        "execution_node": run.controller,
        "controller_node": run.controller,
        "result_traceback": "",
        "event_processing_finished": event_processing_finished(run),
        "launched_by": {"name": run.user},
        "work_unit_id": None,
        "job_template": None,
        "passwords_needed_to_start": [],
        "allow_simultaneous": False,
        "artifacts": {},
        "scm_revision": "",
        "instance_group": None,
        "diff_mode": False,
        "job_slice_number": 0,
        "job_slice_count": 1,
        "webhook_service": "",
        "webhook_credential": None,
        "webhook_guid": "",
        "emitted_events": run.emitted or 0,
        "playledger": {"uuid": run.uuid, "stored": run.stored, "exit_code": run.exit_code},
    }


def event_level(name: str) -> int:
    if name in ("playbook_on_start", "playbook_on_stats", "playbook_on_vars_prompt"):
        return 0
    if name in LEVEL_1:
        return 1
    if name in LEVEL_2:
        return 2
    return 3


def _lines(stdout: str) -> int:
    return stdout.count("\n") + 1 if stdout else 0


def job_event(run: RunRow, e: Event, start_line: int) -> dict[str, Any]:
    return {
        "id": e.counter,
        "type": "job_event",
        "url": f"{job_url(run.id)}job_events/?counter={e.counter}",
        "related": {"job": job_url(run.id)},
        "summary_fields": {
            "job": {"id": run.id, "name": Path(run.playbook).name, "status": STATUS[run.status]}
        },
        "created": e.created,
        "modified": e.created,
        "job": run.id,
        "event": e.event,
        "counter": e.counter,
        "event_display": EVENT_DISPLAY.get(e.event, e.event),
        "event_data": e.event_data,
        "event_level": event_level(e.event),
        "failed": e.failed,
        "changed": e.changed,
        "uuid": e.uuid,
        "parent_uuid": e.parent_uuid or "",
        "host": None,
        "host_name": e.host or "",
        "playbook": e.playbook or "",
        "play": e.play or "",
        "task": e.task or "",
        "role": e.role or "",
        "stdout": e.stdout,
        "start_line": start_line,
        "end_line": start_line + _lines(e.stdout),
        "verbosity": 0,
    }


def host_summary(run: RunRow, index: int, s: HostSummary) -> dict[str, Any]:
    return {
        "id": index,
        "type": "job_host_summary",
        "url": f"{job_url(run.id)}job_host_summaries/?host_name={s.host}",
        "related": {"job": job_url(run.id)},
        "summary_fields": {"host": {"name": s.host}, "job": {"id": run.id}},
        "created": run.finished or run.started,
        "modified": run.finished or run.started,
        "job": run.id,
        "host": None,
        "constructed_host": None,
        "host_name": s.host,
        "changed": s.changed,
        "dark": s.dark,
        "failures": s.failures,
        "ok": s.ok,
        "processed": 1,
        "skipped": s.skipped,
        "failed": bool(s.failures or s.dark),
        "ignored": s.ignored,
        "rescued": s.rescued,
    }


def _page_url(request: Request, page: int) -> str:
    params = dict(request.query_params)
    params["page"] = str(page)
    return f"{request.url.path}?{urlencode(params)}"


def paginated(
    request: Request, count: int, page: int, page_size: int, results: list[Any]
) -> Response:
    if page > 1 and (page - 1) * page_size >= count:
        raise ApiError(404, "invalid_page", "Invalid page.")
    more = page * page_size < count
    return json_response(
        {
            "count": count,
            "next": _page_url(request, page + 1) if more else None,
            "previous": _page_url(request, page - 1) if page > 1 else None,
            "results": results,
        }
    )


def drf_format(
    format: Annotated[str | None, Query(description="json (DRF's format switch)")] = None,
) -> None:
    """AWX (Django REST framework) accepts ?format=json on every route; so do these."""
    if format not in (None, "json", "api"):
        raise ApiError(
            400,
            "invalid_parameter",
            "format must be json",
            [ErrorItem(None, "format", f"unknown format {format!r}")],
        )


JSON_FORMAT = Depends(drf_format)
Page = Annotated[int, Query(ge=1)]
PageSize = Annotated[int, Query(ge=1)]


@router.get("/api/v2/jobs/{job_id}/", summary="AWX: one job")
def get_job(request: Request, job_id: int, _: object = READ, __: None = JSON_FORMAT) -> Response:
    return json_response(job(_job(request, job_id)))


def _events(
    request: Request,
    job_id: int,
    page: Page = 1,
    page_size: PageSize = 25,
    order_by: str = "counter",
    event: str | None = None,
    host_name: str | None = None,
    task: str | None = None,
    failed: bool | None = None,
    changed: bool | None = None,
    counter: int | None = None,
    counter__gt: int | None = None,
    counter__gte: int | None = None,
    counter__lt: int | None = None,
    counter__lte: int | None = None,
    stdout__icontains: Annotated[
        str | None, Query(description="events whose output contains this text, any case")
    ] = None,
    _: object = READ,
    __: None = JSON_FORMAT,
) -> Response:
    if order_by not in ("counter", "id"):
        raise ApiError(
            400,
            "invalid_parameter",
            "order_by supports counter (the only order events have)",
            [ErrorItem(None, "order_by", f"unsupported ordering {order_by!r}")],
        )
    page_size = min(page_size, MAX_PAGE_SIZE)
    store = state(request).store
    run = _job(request, job_id)
    gt = None if counter__gt is None else counter__gt + 1
    lt = None if counter__lt is None else counter__lt - 1
    lo = max((v for v in (counter, counter__gte, gt) if v is not None), default=None)
    hi = min((v for v in (counter, counter__lte, lt) if v is not None), default=None)
    filters = EventFilter(host_name, event, task, failed, changed, lo, hi, stdout__icontains)
    count = store.count_events(run.id, filters)
    after, offset = 0, (page - 1) * page_size
    only_counters = EventFilter(min_counter=lo, max_counter=hi) == filters
    if only_counters and offset and store.max_counter(run.id) == run.stored:
        # Counters 1..stored without holes: page N starts at a known counter (keyset, no scan).
        after, offset = max((lo or 1) - 1, 0) + offset, 0
    events = store.event_page(run.id, filters, after, page_size, offset)
    lines = store.stdout_line_offsets(run.id, [e.counter for e in events])
    results = [job_event(run, e, lines.get(e.counter, 0)) for e in events]
    return paginated(request, count, page, page_size, results)


router.get("/api/v2/jobs/{job_id}/job_events/", summary="AWX: a job's events")(_events)
router.get("/api/v2/jobs/{job_id}/events/", summary="AWX: a job's events (alias)")(_events)


@router.get("/api/v2/jobs/{job_id}/job_host_summaries/", summary="AWX: a job's host summaries")
def get_host_summaries(
    request: Request,
    job_id: int,
    page: Page = 1,
    page_size: PageSize = 25,
    host_name: str | None = None,
    failed: bool | None = None,
    _: object = READ,
    __: None = JSON_FORMAT,
) -> Response:
    page_size = min(page_size, MAX_PAGE_SIZE)
    run = _job(request, job_id)
    summaries = state(request).store.host_summaries(run.id) or []
    rows = [host_summary(run, i, s) for i, s in enumerate(summaries, 1)]
    if host_name is not None:
        rows = [r for r in rows if r["host_name"] == host_name]
    if failed is not None:
        rows = [r for r in rows if r["failed"] == failed]
    start = (page - 1) * page_size
    return paginated(request, len(rows), page, page_size, rows[start : start + page_size])


STDOUT_FORMATS = ("txt", "ansi", "json", "html", "txt_download", "ansi_download")


@router.get("/api/v2/jobs/{job_id}/stdout/", summary="AWX: a job's standard output")
async def get_stdout(
    request: Request,
    job_id: int,
    format: Annotated[str, Query(description=" | ".join(STDOUT_FORMATS))] = "json",
    _: object = READ,
) -> Response:
    if format not in STDOUT_FORMATS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"format must be one of {', '.join(STDOUT_FORMATS)}",
            [ErrorItem(None, "format", f"unknown format {format!r}")],
        )
    store = state(request).store
    run = await run_in_threadpool(_job, request, job_id)
    if format in ("txt", "ansi", "txt_download", "ansi_download"):
        kind = "text" if format.startswith("txt") else "ansi"
        headers = {}
        if format.endswith("_download"):
            ext = "txt" if kind == "text" else "ansi"
            headers["Content-Disposition"] = f'attachment; filename="job_{run.id}.{ext}"'
        return StreamingResponse(
            job_output(store, run, kind), media_type="text/plain; charset=utf-8", headers=headers
        )
    chunks: list[str] = []
    size = 0
    async for chunk in job_output(store, run, "html" if format == "html" else "text"):
        chunks.append(chunk)
        size += len(chunk)
        if size > STDOUT_MAX_DISPLAY:
            content = (
                f"Standard Output too large to display ({size:,}+ bytes), only download "
                f"supported for sizes over {STDOUT_MAX_DISPLAY:,} bytes."
            )
            break
    else:
        content = "".join(chunks)
    if format == "html":
        return Response(content, media_type="text/html; charset=utf-8")
    lines = content.count("\n")
    return json_response(
        {"range": {"start": 0, "end": lines, "absolute_end": lines}, "content": content}
    )
