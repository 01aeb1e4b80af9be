"""The web UI: server-rendered pages over the read side of the store.

Auth: when the server requires tokens, a login form takes a read (or admin) token and keeps it
in an HttpOnly, SameSite=Strict cookie scoped to /ui; it is checked against the store on
every request (a revoked token logs the browser out). A token never appears in a URL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote, urlencode

import msgspec
from fastapi import APIRouter, FastAPI, Query
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from playledger import tokens
from playledger.api.output import event_stream
from playledger.api.state import state
from playledger.errors import RunNotFound
from playledger.events import Event
from playledger.store.base import (
    RECAPLESS_CHECKED,
    EventFilter,
    HostSummary,
    HostTotals,
    RunQuery,
    RunRow,
    Store,
)
from playledger.verify import verify_run
from playledger.web import views

WEB = Path(__file__).resolve().parent.parent / "web"
COOKIE = "playledger_session"
RUNS_PAGE = 50
EVENTS_PAGE = 100
HOSTS_PAGE = 100  # rows of the run page's host table
HOST_RUNS = 20  # rows of a host page's "recent runs"
# Up to this many events the run page renders its verify report (a full scan of the run) in
# place; above it the page is sent at once and fetches the report as a fragment afterwards.
VERIFY_INLINE = 20_000
HOST_FILTERS = ("", "failed")  # the host table: every host, or failed / unreachable ones
TIMELINE_TASKS = 60
RUN_STATUSES = ("running", "successful", "failed", "aborted")

templates = Jinja2Templates(directory=str(WEB / "templates"))
templates.env.filters["when"] = views.when
templates.env.globals["completeness"] = views.completeness
templates.env.globals["duration"] = views.duration
templates.env.globals["OUTPUT_PAGE"] = views.OUTPUT_PAGE


class LoginRequired(Exception):
    """Raised by `_viewer` when the browser has no valid session; answered by a redirect."""


def _viewer(request: Request) -> None:
    st = state(request)
    if not st.settings.auth:
        return
    token = request.cookies.get(COOKIE, "")
    row = tokens.lookup(st.store, token) if token else None
    if row is None or not tokens.allows(row.scope, "read"):
        raise LoginRequired


def _page(request: Request, name: str, status: int = 200, **context: object) -> Response:
    context.setdefault("auth", state(request).settings.auth)
    return templates.TemplateResponse(request, name, context, status_code=status)


def _not_found(request: Request, what: str) -> Response:
    return _page(request, "error.html", 404, title="Not found", message=what)


def _url(path: str, **params: object) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


router = APIRouter(include_in_schema=False)


@router.get("/")
def root() -> Response:
    return RedirectResponse("/ui/", 307)


@router.get("/ui/login")
def login_form(request: Request, next: str = "/ui/") -> Response:
    return _page(request, "login.html", next=_safe_next(next), error=None)


def _safe_next(target: str) -> str:
    """Only a path inside the UI: an open redirect would make the login page a phishing aid."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/ui/"])[0])
    st = state(request)
    row = await run_in_threadpool(tokens.lookup, st.store, token) if token else None
    if row is None or not tokens.allows(row.scope, "read"):
        error = "That token is unknown, revoked, or lacks the read scope."
        return _page(request, "login.html", 401, next=target, error=error)
    response = RedirectResponse(target, 303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/ui",
    )
    return response


@router.post("/ui/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/ui/")
def runs_page(
    request: Request,
    status: str = "",
    playbook: str = "",
    since: Annotated[str, Query(description="YYYY-MM-DD")] = "",
    until: str = "",
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    _viewer(request)
    error = None
    if status and status not in RUN_STATUSES:
        error, status = f"unknown status {status!r}", ""
    query = RunQuery(
        status=status or None,
        playbook=playbook or None,
        since=_day(since),
        until=_day(until),
        before_id=before,
    )
    store = state(request).store
    rows = store.list_runs(query, RUNS_PAGE)
    more = len(rows) == RUNS_PAGE and rows[-1].id > 1
    filters = {"status": status, "playbook": playbook, "since": since, "until": until}
    return _page(
        request,
        "runs.html",
        runs=rows,
        count=store.count_runs(query),
        filters=filters,
        statuses=RUN_STATUSES,
        next_url=_url("/ui/", **filters, before=rows[-1].id) if more else None,
        first_url=_url("/ui/", **filters) if before else None,
        error=error,
    )


def _day(value: str) -> str | None:
    """A YYYY-MM-DD day (or full ISO time) in the store's UTC form; '' means no bound."""
    value = value.strip()
    if not value:
        return None
    return f"{value}T00:00:00.000000Z" if len(value) == 10 else value


def _run(store: Store, ref: str) -> RunRow | None:
    try:
        return store.run(ref)
    except RunNotFound:
        return None


@router.get("/ui/runs/{run_ref}")
def run_page(
    request: Request,
    run_ref: str,
    page: Annotated[int | None, Query(ge=1)] = None,
    q: str = "",
    at: Annotated[int | None, Query(ge=1)] = None,
    wrapped: str = "",
    hpage: Annotated[int | None, Query(ge=1, description="host table page")] = None,
    hosts: Annotated[str, Query(description="'failed': failed or unreachable hosts")] = "",
) -> Response:
    """`q`: a search of the whole output (`at`: the match the page opened on)."""
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    host_error = None
    if hosts not in HOST_FILTERS:
        host_error, hosts = f"unknown host filter {hosts!r}: showing every host", ""
    table = _host_table(store, run.id, hpage or 1, hosts == "failed")
    top = store.max_counter(run.id)
    last = max(top, run.emitted or 0)
    pages = max(1, math.ceil(last / views.OUTPUT_PAGE))
    page = min(page or 1, pages)
    first = (page - 1) * views.OUTPUT_PAGE + 1
    upto = min(page * views.OUTPUT_PAGE, last)
    events = store.event_page(
        run.id, EventFilter(min_counter=first, max_counter=upto), first - 1, views.OUTPUT_PAGE
    )
    # A page past the last stored counter (a run still going) shows no made-up gap.
    folds = views.fold_output(events, first, upto if run.emitted is not None else top)
    report = verify_run(store, run).as_dict() if run.stored <= VERIFY_INLINE else None
    # Links keep the other table's position: the output page and the host table page.
    here = {
        "page": page if page > 1 else None,
        "hpage": table.page if table.page > 1 else None,
        "hosts": hosts,
        "q": q.strip(),
    }
    base = f"/ui/runs/{run.id}"
    return _page(
        request,
        "run.html",
        run=run,
        host_table=table,
        host_error=host_error,
        host_url=lambda **change: _url(base, **{**here, **change}) + "#hosts",
        targeted=_targeted(store, run.id),
        report=report,
        folds=folds,
        page=page,
        pages=pages,
        first=first,
        upto=upto,
        top=top,
        timeline=_timeline(store, run),
        search=_output_search(store, run.id, q.strip(), first, upto, at, bool(wrapped)),
        page_url=lambda n: _url(base, **{**here, "page": n}),
    )


def _output_search(
    store: Store, run_id: int, q: str, first: int, upto: int, at: int | None, wrapped: bool
) -> views.OutputSearch | None:
    """The run page's search state: whole-run count, this page's matches, next/previous."""
    if not q:
        return None
    here = EventFilter(text=q, min_counter=first, max_counter=upto)
    hits = store.event_page(run_id, here, first - 1, views.OUTPUT_PAGE)
    base = f"/ui/runs/{run_id}/search"
    after, before = (at, at) if at else (first - 1, first)
    return views.OutputSearch(
        q=q,
        count=store.count_events(run_id, EventFilter(text=q)),
        hits=frozenset(e.counter for e in hits),
        at=at,
        wrapped=wrapped,
        after=after,
        before=before,
        next_url=_url(base, q=q, after=after),
        prev_url=_url(base, q=q, before=before),
        clear_url=_url(f"/ui/runs/{run_id}", page=_output_page(first)),
    )


@dataclass(frozen=True)
class HostTable:
    """One page of the run page's host table; `totals` covers every host of the recap."""

    totals: HostTotals | None  # None: no recap stored
    rows: list[HostSummary]
    failed_only: bool
    page: int
    pages: int
    first: int  # position of rows[0] among the hosts shown (1-based)

    @property
    def matching(self) -> int:
        if self.totals is None:
            return 0
        return self.totals.failed_hosts if self.failed_only else self.totals.hosts


def _host_table(store: Store, run_id: int, page: int, failed_only: bool) -> HostTable:
    """A page past the last shows the last (as the output pages do)."""
    totals = store.host_totals(run_id)
    if totals is None:
        return HostTable(None, [], failed_only, 1, 1, 1)
    matching = totals.failed_hosts if failed_only else totals.hosts
    pages = max(1, math.ceil(matching / HOSTS_PAGE))
    page = min(page, pages)
    offset = (page - 1) * HOSTS_PAGE
    rows = store.host_summary_page(run_id, HOSTS_PAGE, offset, failed_only)
    return HostTable(totals, rows, failed_only, page, pages, offset + 1)


def _targeted(store: Store, run_id: int) -> int | None:
    """Hosts the plays targeted (as verify counts them), from the play start events alone."""
    plays = store.event_page(run_id, EventFilter(event="playbook_on_play_start"), 0, 1000)
    hosts: set[str] | None = None
    for play in plays:
        names = msgspec.json.decode(bytes(play.event_data)).get("hosts_targeted")
        if names is not None:
            hosts = (hosts or set()) | set(names)
    return None if hosts is None else len(hosts)


def _timeline(store: Store, run: RunRow) -> Markup:
    """The first TIMELINE_TASKS tasks (one more is read: its start ends the last one shown)."""
    tasks = store.event_page(
        run.id, EventFilter(event="playbook_on_task_start"), 0, TIMELINE_TASKS + 1
    )
    end = run.finished
    if end is None and tasks:
        last = store.event_page(run.id, None, max(store.max_counter(run.id) - 1, 0), 1)
        end = last[0].created if last else None
    shown = tasks[:TIMELINE_TASKS]
    # Hosts per task: runner_on_start events between its start and the next task's (an
    # indexed range count; with the free strategy, tasks overlap and this is approximate).
    hosts: dict[str, int] = {}
    for i, t in enumerate(shown):
        upto = tasks[i + 1].counter - 1 if i + 1 < len(tasks) else None
        started = EventFilter(event="runner_on_start", min_counter=t.counter, max_counter=upto)
        hosts[t.task_uuid or ""] = store.count_events(run.id, started)
    spans = views.task_spans(tasks, run.started, end)[:TIMELINE_TASKS]
    more = len(tasks) > TIMELINE_TASKS
    return views.timeline_svg(spans, hosts, more)


@router.get("/ui/runs/{run_ref}/verify")
def verify_page(request: Request, run_ref: str) -> Response:
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    return _page(request, "verify.html", run=run, report=verify_run(store, run).as_dict())


@router.get("/ui/runs/{run_ref}/verify/fragment")
def verify_fragment(request: Request, run_ref: str) -> Response:
    """The verify report alone, as HTML: the run page fetches it after loading (a big run's
    report reads every event). Computed afresh on every request, never cached: a purge, a late
    duplicate or a still-open run would make a kept verdict wrong."""
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return Response("no such run", 404)
    report = verify_run(store, run).as_dict()
    return _page(request, "verify_fragment.html", report=report)


@router.get("/ui/runs/{run_ref}/next-failure")
def next_failure(
    request: Request, run_ref: str, after: Annotated[int, Query(ge=0)] = 0
) -> Response:
    """Redirect to the output page holding the first failure after counter `after`."""
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    found = _failures(store, run.id, after)
    if not found and after:
        found = _failures(store, run.id, 0)  # wrap around
    if not found:
        return RedirectResponse(f"/ui/runs/{run.id}?nofail=1#output", 303)
    counter = found[0].counter
    return RedirectResponse(f"/ui/runs/{run.id}?page={_output_page(counter)}#c{counter}", 303)


@router.get("/ui/runs/{run_ref}/search")
def search_output(
    request: Request,
    run_ref: str,
    q: str = "",
    after: Annotated[int, Query(ge=0)] = 0,
    before: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """Redirect to the output page holding the first event whose output contains `q` after
    counter `after` (with `before`: the last one before it), wrapping around at either end;
    the whole run is searched (one keyset query, LIMIT 1), not only the page shown."""
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    q = q.strip()
    base = f"/ui/runs/{run.id}"
    here = before if before is not None else after + 1
    if not q:  # no search: back to where the form was
        return RedirectResponse(_url(base, page=_output_page(here)) + "#output", 303)
    found, wrapped = _match(store, run.id, q, after, before)
    if found is None:  # the page says "0 events match"
        return RedirectResponse(_url(base, page=_output_page(here), q=q) + "#output", 303)
    target = _url(base, page=_output_page(found), q=q, at=found, wrapped="yes" if wrapped else None)
    return RedirectResponse(f"{target}#c{found}", 303)


def _match(
    store: Store, run_id: int, q: str, after: int, before: int | None
) -> tuple[int | None, bool]:
    """The counter of the next (or, with `before`, previous) match, and whether the search
    wrapped around the end (or the start) of the output to find it."""
    if before is not None:
        found = store.last_event(run_id, EventFilter(text=q, max_counter=before - 1))
        if found is not None:
            return found.counter, False
        last = store.last_event(run_id, EventFilter(text=q))
        return (last.counter, True) if last is not None else (None, False)
    page = store.event_page(run_id, EventFilter(text=q), after, 1)
    if page:
        return page[0].counter, False
    page = store.event_page(run_id, EventFilter(text=q), 0, 1) if after else []
    return (page[0].counter, True) if page else (None, False)


def _output_page(counter: int) -> int:
    return max(counter - 1, 0) // views.OUTPUT_PAGE + 1


def _failures(store: Store, run_id: int, after: int) -> list[Event]:
    """The first failed event after `after` (the recap carries the run's failed flag: skipped;
    an unreachable host counts as a failure)."""
    failed = [
        e
        for e in store.event_page(run_id, EventFilter(failed=True), after, 2)
        if e.event != "playbook_on_stats"
    ]
    dark = store.event_page(run_id, EventFilter(event="runner_on_unreachable"), after, 1)
    return sorted(failed + dark, key=lambda e: e.counter)[:1]


def _flag(value: str) -> bool | None:
    return {"yes": True, "no": False}.get(value)


@router.get("/ui/runs/{run_ref}/events")
def events_page(
    request: Request,
    run_ref: str,
    host: str = "",
    event: str = "",
    task: str = "",
    failed: str = "",
    changed: str = "",
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    filters = EventFilter(
        host=host or None,
        event=event or None,
        task=task or None,
        failed=_flag(failed),
        changed=_flag(changed),
    )
    rows = store.event_page(run.id, filters, after, EVENTS_PAGE)
    form = {"host": host, "event": event, "task": task, "failed": failed, "changed": changed}
    base = f"/ui/runs/{run.id}/events"
    more = len(rows) == EVENTS_PAGE
    return _page(
        request,
        "events.html",
        run=run,
        events=rows,
        count=store.count_events(run.id, filters),
        form=form,
        outcome=views.outcome,
        pretty=lambda e: views.pretty_json(bytes(e.event_data)),
        next_url=_url(base, **form, after=rows[-1].counter) if more else None,
        first_url=_url(base, **form) if after else None,
        task_url=lambda t: _url(base, task=t),
        host_url=lambda h: f"/ui/runs/{run.id}/hosts/{quote(h, safe='')}",
    )


@router.get("/ui/runs/{run_ref}/hosts/{host}")
def host_page(
    request: Request,
    run_ref: str,
    host: str,
    after: Annotated[int, Query(ge=0)] = 0,
    before: Annotated[int | None, Query(ge=1, description="recent runs: ids below it")] = None,
) -> Response:
    _viewer(request)
    store = state(request).store
    run = _run(store, run_ref)
    if run is None:
        return _not_found(request, f"no run {run_ref!r}")
    rows = store.event_page(run.id, EventFilter(host=host), after, views.OUTPUT_PAGE)
    recent = store.host_runs(host, HOST_RUNS, before)
    base = f"/ui/runs/{run.id}/hosts/{quote(host, safe='')}"
    more = len(rows) == views.OUTPUT_PAGE
    older = len(recent) == HOST_RUNS and recent[-1].run.id > 1
    kept = after or None  # the output position stays while paging the recent runs
    return _page(
        request,
        "host.html",
        run=run,
        host=host,
        summary=store.host_summary(run.id, host),
        folds=views.fold_output(rows, 1, 0, gaps=False),
        count=store.count_events(run.id, EventFilter(host=host)),
        recent=recent,
        recapless_checked=RECAPLESS_CHECKED,
        older_url=_url(base, after=kept, before=recent[-1].run.id) + "#recent" if older else None,
        newest_url=_url(base, after=kept) + "#recent" if before else None,
        next_url=_url(base, after=rows[-1].counter, before=before) if more else None,
        first_url=_url(base, before=before) if after else None,
    )


@router.get("/ui/runs/{run_ref}/stream")
def stream(request: Request, run_ref: str, after: Annotated[int, Query(ge=0)] = 0) -> Response:
    """The API's live event stream, authenticated by the UI session (EventSource cannot send
    an Authorization header); each event comes rendered and ready to fold (views.live_block)."""
    _viewer(request)
    st = state(request)
    run = _run(st.store, run_ref)
    if run is None:
        return Response("no such run", 404)
    body = event_stream(
        request,
        st.store,
        run,
        after,
        st.settings.stream_poll,
        st.settings.stream_idle_end,
        encode=lambda e: msgspec.json.encode(views.live_block(e)),
    )
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def install(app: FastAPI) -> None:
    """Mount the UI routes and static files on the API app."""

    async def login_required(request: Request, exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.url.path.endswith(("/stream", "/verify/fragment")):  # fetched by scripts
            return Response("login required", 401)
        return RedirectResponse(_url("/ui/login", next=target), 303)

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(WEB / "static")), name="ui-static")
    app.add_exception_handler(LoginRequired, login_required)
