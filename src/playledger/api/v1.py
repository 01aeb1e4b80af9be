"""The v1 read API: runs, one run, its events, host summaries, job output, verify, live stream.

Handlers are plain functions (FastAPI runs them in its thread pool): each store call is a
short indexed query on the calling thread's own read connection.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from playledger.api.auth import require
from playledger.api.output import FORMATS, event_stream, job_output
from playledger.api.schema import (
    ApiError,
    ErrorItem,
    EventList,
    HostCounts,
    HostRunList,
    HostRunOut,
    HostSummaryList,
    HostSummaryOut,
    RunList,
    RunOut,
    TokenOut,
    json_response,
    ref,
)
from playledger.api.state import state
from playledger.store.base import RECAPLESS_CHECKED, EventFilter, HostSummary, RunQuery, RunRow
from playledger.verify import verify_run

READ = Depends(require("read"))
RUN_STATUSES = ("running", "successful", "failed", "aborted")


def known_query(request: Request) -> None:
    """Unknown query parameters are refused, never ignored: a misspelt filter would
    otherwise silently return (and count) everything."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    allowed: set[str] = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        allowed.update(p.alias for p in d.query_params)
        stack.extend(d.dependencies)
    unknown = sorted(k for k in request.query_params if k not in allowed)
    if unknown:
        raise ApiError(
            400,
            "unknown_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}; "
            f"known: {', '.join(sorted(allowed))}",
            [ErrorItem(None, k, "unknown query parameter") for k in unknown],
        )


router = APIRouter(tags=["read"], dependencies=[Depends(known_query)])


def elapsed(run: RunRow) -> float | None:
    if not run.started or not run.finished:
        return None
    try:
        delta = datetime.fromisoformat(run.finished) - datetime.fromisoformat(run.started)
    except ValueError:
        return None
    return round(delta.total_seconds(), 3)


def host_counts(summaries: list[HostSummary] | None) -> HostCounts | None:
    if summaries is None:
        return None
    return HostCounts(
        total=len(summaries),
        ok=sum(1 for s in summaries if not s.failures and not s.dark),
        changed=sum(1 for s in summaries if s.changed),
        failed=sum(1 for s in summaries if s.failures),
        unreachable=sum(1 for s in summaries if s.dark),
    )


def run_out(run: RunRow, summaries: list[HostSummary] | None = None) -> RunOut:
    base = f"/api/v1/runs/{run.id}"
    return RunOut(
        id=run.id,
        uuid=run.uuid,
        playbook=run.playbook,
        status=run.status,
        started=run.started,
        finished=run.finished,
        elapsed=elapsed(run),
        emitted=run.emitted,
        stored=run.stored,
        complete=run.emitted is not None and run.stored == run.emitted and not run.append_errors,
        lag=None if run.emitted is None else run.emitted - run.stored,
        hosts=run.hosts,
        host_counts=host_counts(summaries),
        exit_code=run.exit_code,
        append_errors=run.append_errors,
        controller=run.controller,
        user=run.user,
        cwd=run.cwd,
        argv=run.argv,
        ansible_version=run.ansible_version,
        links={
            "self": base,
            "events": f"{base}/events",
            "stream": f"{base}/events/stream",
            "hosts": f"{base}/hosts",
            "stdout": f"{base}/stdout",
            "verify": f"{base}/verify",
            "awx": f"/api/v2/jobs/{run.id}/",
        },
    )


def next_url(request: Request, **changes: Any) -> str:
    params = dict(request.query_params)
    params.update({k: str(v) for k, v in changes.items()})
    return f"{request.url.path}?{urlencode(params)}"


@router.get("/api/v1/health", summary="Liveness (no token needed)")
def health() -> Response:
    return json_response({"status": "ok"})


@router.get("/api/v1/runs", summary="Runs, newest first", responses={200: ref("RunList")})
def list_runs(
    request: Request,
    status: Annotated[str | None, Query(description="running|successful|failed|aborted")] = None,
    playbook: Annotated[str | None, Query(description="Substring of the playbook path")] = None,
    since: Annotated[datetime | None, Query(description="Started at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="Started before (ISO 8601)")] = None,
    before: Annotated[int | None, Query(ge=1, description="Keyset cursor: ids below it")] = None,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    _: object = READ,
) -> Response:
    if status is not None and status not in RUN_STATUSES:
        raise ApiError(
            400,
            "invalid_parameter",
            f"status must be one of {', '.join(RUN_STATUSES)}",
            [ErrorItem(None, "status", f"unknown status {status!r}")],
        )
    query = RunQuery(
        status=status,
        playbook=playbook,
        since=_iso(since),
        until=_iso(until),
        before_id=before,
    )
    store = state(request).store
    rows = store.list_runs(query, page_size)
    more = len(rows) == page_size and rows[-1].id > 1
    return json_response(
        RunList(
            count=store.count_runs(query),
            next=next_url(request, before=rows[-1].id) if more else None,
            results=[run_out(r) for r in rows],
        )
    )


def _iso(moment: datetime | None) -> str | None:
    """Runs keep `started` as UTC 'YYYY-MM-DDTHH:MM:SS.ffffffZ'; compare in that form.
    A time without a zone is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.get("/api/v1/runs/{run_ref}", summary="One run", responses={200: ref("RunOut")})
def get_run(request: Request, run_ref: str, _: object = READ) -> Response:
    store = state(request).store
    run = store.run(run_ref)
    return json_response(run_out(run, store.host_summaries(run.id)))


@router.get(
    "/api/v1/runs/{run_ref}/events",
    summary="A run's events in counter order (keyset pagination with `after`)",
    responses={200: ref("EventList")},
)
def list_events(
    request: Request,
    run_ref: str,
    host: str | None = None,
    event: str | None = None,
    task: Annotated[str | None, Query(description="Task name or task uuid")] = None,
    failed: bool | None = None,
    changed: bool | None = None,
    min_counter: Annotated[int | None, Query(ge=1)] = None,
    max_counter: Annotated[int | None, Query(ge=1)] = None,
    text: Annotated[
        str | None,
        Query(
            description="Case-insensitive substring of the event's stdout, taken literally "
            "(% and _ are no wildcards); empty: no filter"
        ),
    ] = None,
    after: Annotated[int, Query(ge=0, description="Cursor: counters above it")] = 0,
    page_size: Annotated[int, Query(ge=1, le=1000)] = 200,
    count: Annotated[bool, Query(description="Include the total count of matches")] = True,
    _: object = READ,
) -> Response:
    store = state(request).store
    run = store.run(run_ref)
    filters = EventFilter(
        host, event, task, failed, changed, min_counter, max_counter, text=text or None
    )
    events = store.event_page(run.id, filters, after, page_size)
    more = len(events) == page_size
    return json_response(
        EventList(
            count=store.count_events(run.id, filters) if count else None,
            next=next_url(request, after=events[-1].counter) if more else None,
            results=events,
        )
    )


@router.get(
    "/api/v1/runs/{run_ref}/events/stream",
    summary="Live stream of a run's events as they are stored (Server-Sent Events)",
    description=(
        "`event: event` messages carry one event each (`id:` is its counter; reconnect with "
        "Last-Event-ID or `after`); a final `event: end` reports status, emitted and stored."
    ),
    response_class=StreamingResponse,
)
def stream_events(
    request: Request,
    run_ref: str,
    after: Annotated[int | None, Query(ge=0)] = None,
    _: object = READ,
) -> StreamingResponse:
    st = state(request)
    run = st.store.run(run_ref)
    start = after
    if start is None:
        last = request.headers.get("last-event-id", "0")
        start = int(last) if last.isdigit() else 0
    stream = event_stream(
        request, st.store, run, start, st.settings.stream_poll, st.settings.stream_idle_end
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/api/v1/runs/{run_ref}/hosts",
    summary="Host summaries from the run's recap",
    responses={200: ref("HostSummaryList")},
)
def list_hosts(request: Request, run_ref: str, _: object = READ) -> Response:
    store = state(request).store
    run = store.run(run_ref)
    summaries = store.host_summaries(run.id)
    if summaries is None:
        raise ApiError(
            404,
            "no_host_summary",
            f"run {run.id} has no stored recap (stats event) yet: {run.stored:,} events stored, "
            f"status {run.status}",
        )
    results = [summary_out(s) for s in summaries]
    return json_response(HostSummaryList(len(results), results))


def summary_out(s: HostSummary) -> HostSummaryOut:
    return HostSummaryOut(
        s.host,
        s.ok,
        s.changed,
        s.failures,
        s.dark,
        s.skipped,
        s.rescued,
        s.ignored,
        failed=bool(s.failures or s.dark),
    )


@router.get(
    "/api/v1/hosts/{host:path}/runs",
    summary="The runs a host took part in, newest first",
    description=(
        "From the recaps (`source: recap`, with the host's summary), and among the "
        f"{RECAPLESS_CHECKED} newest runs without a recap (running, killed) those with events "
        "of the host (`source: events`, `summary: null`). Keyset pages: follow `next`."
    ),
    responses={200: ref("HostRunList")},
)
def host_runs(
    request: Request,
    host: str,
    before: Annotated[int | None, Query(ge=1, description="Keyset cursor: ids below it")] = None,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    _: object = READ,
) -> Response:
    rows = state(request).store.host_runs(host, page_size, before)
    more = len(rows) == page_size and rows[-1].run.id > 1
    return json_response(
        HostRunList(
            next=next_url(request, before=rows[-1].run.id) if more else None,
            results=[
                HostRunOut(
                    source="recap" if h.summary else "events",
                    summary=summary_out(h.summary) if h.summary else None,
                    run=run_out(h.run),
                )
                for h in rows
            ],
        )
    )


MEDIA = {"text": "text/plain; charset=utf-8", "ansi": "text/plain; charset=utf-8"}


@router.get(
    "/api/v1/runs/{run_ref}/stdout",
    summary="Job output as the default callback printed it",
    response_class=StreamingResponse,
)
def get_stdout(
    request: Request,
    run_ref: str,
    format: Annotated[str, Query(description="text | ansi | html")] = "text",
    _: object = READ,
) -> StreamingResponse:
    if format not in FORMATS:
        raise ApiError(
            400,
            "invalid_parameter",
            f"format must be one of {', '.join(FORMATS)}",
            [ErrorItem(None, "format", f"unknown format {format!r}")],
        )
    store = state(request).store
    run = store.run(run_ref)
    media = MEDIA.get(format, "text/html; charset=utf-8")
    return StreamingResponse(job_output(store, run, format), media_type=media)


@router.get(
    "/api/v1/runs/{run_ref}/verify",
    summary="Verify report: completeness, gaps, hosts, hash chain",
    description="Readable with an ingest token too: a producer proves its own delivery.",
)
def get_verify(
    request: Request, run_ref: str, _: object = Depends(require("read", "ingest"))
) -> Response:
    store = state(request).store
    run = store.run(run_ref)
    report = verify_run(store, run).as_dict()
    report["hosts"] = run.hosts
    return json_response(report)


@router.get("/api/v1/tokens", summary="Tokens (never the tokens themselves)", tags=["admin"])
def list_tokens(request: Request, _: object = Depends(require("admin"))) -> Response:
    rows = state(request).store.tokens()
    return json_response(
        [TokenOut(t.id, t.name, t.scope, t.prefix, t.created, t.revoked) for t in rows]
    )
