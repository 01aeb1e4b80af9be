"""Job output over HTTP (text, ANSI, HTML) and the live event stream (Server-Sent Events).

Both read the store page by page (keyset on counter, one short query per page), so a
million-event run is never held in memory and no cursor outlives a thread hop.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from playledger import render
from playledger.events import Event
from playledger.store.base import RunRow, Store

PAGE = 1000
FORMATS = ("text", "ansi", "html")
_SGR = re.compile(r"\x1b\[([0-9;]*)m")

HTML_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #1e1e1e; color: #d4d4d4; }}
pre {{ font-family: monospace; white-space: pre-wrap; }}
.sgr-31 {{ color: #f14c4c; }} .sgr-32 {{ color: #23d18b; }} .sgr-33 {{ color: #f5f543; }}
.sgr-35 {{ color: #d670d6; }} .sgr-36 {{ color: #29b8db; }} .sgr-90 {{ color: #808080; }}
.sgr-1 {{ font-weight: bold; }}
</style></head><body><pre>
"""
HTML_TAIL = "</pre></body></html>\n"


def ansi_to_html(text: str) -> str:
    """Escape `text` and turn the SGR colour codes render.py emits into classed spans."""
    out: list[str] = []
    pos = 0
    open_spans = 0
    for m in _SGR.finditer(text):
        out.append(html.escape(text[pos : m.start()]))
        pos = m.end()
        codes = [c for c in m.group(1).split(";") if c]
        if not codes or codes == ["0"]:
            out.append("</span>" * open_spans)
            open_spans = 0
        else:
            out.append(f'<span class="{" ".join(f"sgr-{c}" for c in codes)}">')
            open_spans += 1
    out.append(html.escape(text[pos:]))
    out.append("</span>" * open_spans)
    return "".join(out)


async def job_output(store: Store, run: RunRow, fmt: str) -> AsyncIterator[str]:
    """The job output as `playledger show` prints it: one block (and newline) per event."""
    if fmt == "html":
        yield HTML_HEAD.format(title=html.escape(f"run {run.id}: {run.playbook}"))
    after = 0
    while True:
        events = await run_in_threadpool(store.event_page, run.id, None, after, PAGE)
        if not events:
            break
        after = events[-1].counter
        blocks = render.job_output(events, color=fmt != "text")
        text = "".join(block + "\n" for block in blocks)
        yield ansi_to_html(text) if fmt == "html" else text
        if len(events) < PAGE:
            break
    if fmt == "html":
        yield HTML_TAIL


def _finished(run: RunRow) -> bool:
    return run.emitted is not None or run.status == "aborted"


async def event_stream(
    request: Request,
    store: Store,
    run: RunRow,
    after: int,
    poll: float,
    idle_end: float,
    encode: Callable[[Event], bytes] | None = None,
) -> AsyncIterator[str]:
    """SSE: every stored event after `after`, as stored (or as `encode` gives it: the web UI
    sends its own rendering), then `end` once the run is complete.

    Ends when the run's final record is stored and every counter up to `emitted` was sent,
    when an aborted run has nothing more, when a finished run brings nothing new for
    `idle_end` seconds (events missing for good: see the verify report), or when the client
    goes away.
    """
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    last_beat = loop.time()
    encoder = msgspec.json.Encoder()
    data_of = encode or encoder.encode
    while True:
        if await request.is_disconnected():
            return
        events = await run_in_threadpool(store.event_page, run.id, None, after, PAGE)
        for e in events:
            data = data_of(e).decode()
            yield f"id: {e.counter}\nevent: event\ndata: {data}\n\n"
            after = e.counter
        if len(events) == PAGE:
            continue
        now = loop.time()
        if events:
            quiet_since = now
        current = await run_in_threadpool(store.run, str(run.id))
        if _finished(current) and (
            (current.emitted is not None and after >= current.emitted)
            or (current.status == "aborted" and not events)
            or now - quiet_since >= idle_end
        ):
            end = {
                "run": current.uuid,
                "status": current.status,
                "emitted": current.emitted,
                "stored": current.stored,
                "last_counter": after,
            }
            yield f"event: end\ndata: {encoder.encode(end).decode()}\n\n"
            return
        if now - last_beat >= 15:
            last_beat = now
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)
