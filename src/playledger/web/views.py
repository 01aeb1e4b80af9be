"""What the HTML pages show, computed from store rows: completeness, folded job output,
the task timeline. Pure functions (no requests, no templates) so they are testable alone."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime

from markupsafe import Markup

from playledger import render
from playledger.api.output import ansi_to_html
from playledger.events import Event
from playledger.store.base import RunRow

OUTPUT_PAGE = 500  # counters per job-output page: page k holds counters (k-1)*P+1 .. k*P
TASK_EVENTS = ("playbook_on_task_start", "playbook_on_handler_task_start")
FOLD_EVENTS = ("playbook_on_play_start", *TASK_EVENTS, "playbook_on_stats")  # each opens a fold


@dataclass(frozen=True)
class Completeness:
    """The badge of a run: `state` is complete | running | incomplete, never optimistic."""

    state: str
    reason: str

    @property
    def label(self) -> str:
        return {"complete": "complete", "running": "still running"}.get(self.state, "incomplete")


def completeness(run: RunRow) -> Completeness:
    if run.status == "running" and run.emitted is None:
        return Completeness("running", f"{run.stored:,} events stored so far; no final record yet")
    reasons: list[str] = []
    if run.emitted is None:
        reasons.append(f"no final record ({run.status}): how many events were emitted is unknown")
    elif run.stored < run.emitted:
        reasons.append(f"{run.emitted - run.stored:,} of {run.emitted:,} events not stored")
    elif run.stored > run.emitted:
        reasons.append(f"{run.stored:,} stored but {run.emitted:,} emitted")
    if run.append_errors:
        reasons.append(f"{run.append_errors:,} events lost before the spool")
    if reasons:
        return Completeness("incomplete", "; ".join(reasons))
    return Completeness("complete", f"all {run.stored:,} emitted events stored")


def duration(started: str | None, finished: str | None) -> str:
    if not started or not finished:
        return ""
    try:
        seconds = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
    except ValueError:
        return ""
    return seconds_text(seconds)


def seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(stamp: str | None) -> str:
    """'2026-12-04T10:11:12.123456Z' as '2026-12-04 10:11:12' (UTC)."""
    if not stamp:
        return ""
    return stamp.replace("T", " ")[:19]


def pretty_json(raw: bytes) -> str:
    try:
        return json.dumps(json.loads(raw), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        return raw.decode("utf-8", "backslashreplace")


def outcome(event: Event) -> str:
    """A css class for an event's row: failed, unreachable, changed, skipped, ok or ''.
    The recap (stats) carries the run's failed flag but is no failure of its own."""
    name = event.event
    if name == "playbook_on_stats":
        return ""
    if name == "runner_on_unreachable":
        return "unreachable"
    if event.failed or name.endswith("_failed"):
        return "failed"
    if name.endswith("skipped"):
        return "skipped"
    if name.endswith("_ok"):
        return "changed" if event.changed else "ok"
    return ""


@dataclass
class Block:
    counter: int
    html: Markup
    css: str


@dataclass
class Fold:
    """One play or task heading and the output blocks under it (a <details> on the page)."""

    title: str
    kind: str  # play | task | gap | other
    continued: bool = False
    blocks: list[Block] = field(default_factory=list)
    failures: int = 0
    task_uuid: str | None = None  # the task whose output it holds last (live events go on)


def fold_head(event: Event) -> tuple[str, str]:
    """The title and kind of the fold `event` opens (FOLD_EVENTS) or, for a result met
    mid-task, of the fold that continues its task."""
    if event.event == "playbook_on_play_start":
        return f"PLAY [{event.play or ''}]", "play"
    if event.event in TASK_EVENTS:
        return f"TASK [{event.task or ''}]", "task"
    if event.event == "playbook_on_stats":
        return "PLAY RECAP", "play"
    return (f"TASK [{event.task}]", "task") if event.task else ("output", "other")


def block_html(event: Event) -> Markup:
    """One event's output as the terminal showed it (the recap uncoloured); '' for none."""
    text = "\n".join(render.job_output([event], color=event.event != "playbook_on_stats"))
    return Markup(ansi_to_html(text))


def live_block(event: Event) -> dict[str, object]:
    """What the run page's live tail needs of an event to fold it as `fold_output` does
    (app.js follows the same steps), with its output already rendered here."""
    title, kind = fold_head(event)
    return {
        "counter": event.counter,
        "opens": event.event in FOLD_EVENTS,
        "play_start": event.event == "playbook_on_play_start",
        "title": title,
        "kind": kind,
        "task_uuid": event.task_uuid,
        "css": outcome(event),
        "html": str(block_html(event)) if event.stdout else "",
    }


@dataclass(frozen=True)
class OutputSearch:
    """A search of the whole run's output, as the run page shows it."""

    q: str
    count: int  # events of the whole run whose output contains q
    hits: frozenset[int]  # the matching counters on the page shown
    at: int | None  # the match the page was opened on (the current position)
    wrapped: bool  # it was found by wrapping around an end of the output
    after: int  # "next match" looks after this counter
    before: int  # "previous match" looks before this counter
    next_url: str
    prev_url: str
    clear_url: str


def fold_output(events: list[Event], first: int, last: int, gaps: bool = True) -> list[Fold]:
    """Fold one page of events (counters first..last) by play and task. Counters absent from
    the store become `gap` folds, so missing output is shown, never silently skipped
    (`gaps=False` for a filtered selection, where absent counters are expected)."""
    folds: list[Fold] = []
    expected = first
    current: Fold | None = None
    task_uuid: str | None = None  # the task `current` belongs to
    for event in events:
        if gaps and event.counter > expected:
            folds.append(Fold(_gap_title(expected, event.counter - 1), "gap"))
            current = None
        expected = event.counter + 1
        if event.event in FOLD_EVENTS:
            current = Fold(*fold_head(event))
            folds.append(current)
        elif current is None or (event.task_uuid and event.task_uuid != task_uuid):
            # A page or selection that starts mid-task, or (host pages) the next task's
            # results without its start event.
            if not event.stdout:
                continue  # e.g. playbook_on_start: nothing to show, no empty fold
            current = Fold(*fold_head(event), continued=first > 1)
            folds.append(current)
        if event.event == "playbook_on_play_start":
            task_uuid = None
        elif event.task_uuid and event.stdout:
            task_uuid = event.task_uuid
        current.task_uuid = task_uuid
        if not event.stdout:
            continue
        css = outcome(event)
        if css in ("failed", "unreachable"):
            current.failures += 1
        current.blocks.append(Block(event.counter, block_html(event), css))
    if gaps and expected <= last:
        folds.append(Fold(_gap_title(expected, last), "gap"))
    return folds


def _gap_title(lo: int, hi: int) -> str:
    if lo == hi:
        return f"event {lo:,} is not stored"
    return f"events {lo:,}–{hi:,} are not stored"


@dataclass(frozen=True)
class TaskSpan:
    task: str
    uuid: str
    start: float  # seconds since the run started
    length: float
    hosts: int | None


def task_spans(tasks: list[Event], started: str, end: str | None) -> list[TaskSpan]:
    """Each task lasts from its start event to the next task's (the last: to `end`)."""
    try:
        t0 = datetime.fromisoformat(started)
    except ValueError:
        return []
    stamps: list[float] = []
    for e in tasks:
        try:
            stamps.append((datetime.fromisoformat(e.created) - t0).total_seconds())
        except ValueError:
            stamps.append(stamps[-1] if stamps else 0.0)
    try:
        final = (datetime.fromisoformat(end) - t0).total_seconds() if end else None
    except ValueError:
        final = None
    spans: list[TaskSpan] = []
    for i, e in enumerate(tasks):
        stop = stamps[i + 1] if i + 1 < len(tasks) else (final if final is not None else stamps[i])
        spans.append(TaskSpan(e.task or "", e.task_uuid or "", stamps[i], stop - stamps[i], None))
    return spans


def timeline_svg(spans: list[TaskSpan], hosts: dict[str, int], more: bool = False) -> Markup:
    """A server-rendered bar chart: one row per task, bar from its start for its length;
    `more`: later tasks exist and are not drawn (said under the chart)."""
    if not spans:
        return Markup("")
    total = max((s.start + s.length for s in spans), default=0.0) or 1.0
    row, label_w, chart_w = 22, 260, 560
    height = row * len(spans) + 24
    parts = [
        f'<svg class="timeline" role="img" viewBox="0 0 {label_w + chart_w + 130} {height}" '
        f'width="100%" aria-label="task timeline">'
    ]
    for i, s in enumerate(spans):
        y = i * row + 4
        x = label_w + s.start / total * chart_w
        w = max(s.length / total * chart_w, 1.5)
        name = s.task if len(s.task) <= 38 else s.task[:37] + "…"
        n = hosts.get(s.uuid)
        host_text = f", {n} host{'s' if n != 1 else ''}" if n is not None else ""
        tip = html.escape(f"{s.task}: {seconds_text(s.length)}{host_text}")
        parts.append(
            f"<g><title>{tip}</title>"
            f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{html.escape(name)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 8}" rx="2"/>'
            f'<text x="{x + w + 6:.1f}" y="{y + 13}" class="dim">'
            f"{html.escape(seconds_text(s.length) + host_text)}</text></g>"
        )
    parts.append(
        f'<text x="{label_w}" y="{height - 4}" class="dim">0s</text>'
        f'<text x="{label_w + chart_w}" y="{height - 4}" text-anchor="end" class="dim">'
        f"{html.escape(seconds_text(total))}</text></svg>"
    )
    if more:
        parts.append(f'<p class="dim">Only the first {len(spans)} tasks are drawn.</p>')
    return Markup("".join(parts))
