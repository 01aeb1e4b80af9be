"""The web UI in process (no JavaScript): every page renders readable HTML, incomplete runs
never look complete, the output is paginated, and login keeps the token out of URLs."""

from __future__ import annotations

import json
import re

from apitest import Api
from playledger.events import Event
from playledger.web.views import OUTPUT_PAGE, fold_output, live_block
from test_api_read import _sse
from uifactories import job_run


def login(api: Api, scope: str = "read") -> None:
    r = api.client.post(
        "/ui/login",
        content=f"token={api.tokens[scope]}&next=/ui/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert api.tokens[scope] not in r.headers["location"]


def test_login_required_and_token_never_in_a_url(api: Api) -> None:
    r = api.client.get("/ui/runs/1?page=2")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fruns%2F1%3Fpage%3D2"
    form = api.client.get("/ui/login")
    assert form.status_code == 200 and 'type="password" name="token"' in form.text
    assert 'method="post"' in form.text
    bad = api.client.post(
        "/ui/login",
        content="token=plt_nope&next=/ui/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert bad.status_code == 401 and "unknown, revoked" in bad.text
    # an ingest token cannot read
    ingest = api.client.post(
        "/ui/login",
        content=f"token={api.tokens['ingest']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert ingest.status_code == 401
    # an open redirect is refused
    evil = api.client.post(
        "/ui/login",
        content=f"token={api.tokens['read']}&next=https://evil.example/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert evil.headers["location"] == "/ui/"
    login(api)
    assert api.client.get("/ui/").status_code == 200
    out = api.client.post("/ui/logout")
    assert out.status_code == 303 and 'playledger_session=""' in out.headers["set-cookie"]
    api.client.cookies.clear()
    assert api.client.get("/ui/").status_code == 303


def test_runs_page_never_shows_an_incomplete_run_as_complete(api: Api) -> None:
    api.store.ingest(job_run(3))  # 1: complete
    api.store.ingest(job_run(3, drop=frozenset({5, 6})))  # 2: two events lost
    running = job_run(3, finished=False)
    api.store.ingest(running)  # 3: still running
    api.store.ingest(job_run(2, finished=False))
    api.store.mark_aborted(api.store.run("4").uuid)  # 4: aborted, no final record
    login(api)
    page = api.client.get("/ui/").text
    rows = {int(m[0]): m[1] for m in re.findall(r'data-run="(\d+)">(.*?)</tr>', page, re.S)}
    assert set(rows) == {1, 2, 3, 4}
    assert 'data-complete="complete"' in rows[1]
    assert 'data-complete="incomplete"' in rows[2] and "2 of" in rows[2]
    assert 'data-complete="running"' in rows[3] and "still running" in rows[3]
    assert 'data-complete="incomplete"' in rows[4] and "no final record" in rows[4]
    for n in (2, 3, 4):
        assert 'data-complete="complete"' not in rows[n]
    filtered = api.client.get("/ui/?status=aborted").text
    assert 'data-run="4"' in filtered and 'data-run="1"' not in filtered


def test_run_page_reads_without_javascript(api: Api) -> None:
    api.store.ingest(job_run(4, hosts=5, fail=frozenset({(2, 1)}), in_summary=3))
    login(api)
    page = api.client.get("/ui/runs/1").text
    assert "targeted 5 hosts, 3 in summary" in page
    assert re.search(r'<a href="/ui/runs/1/hosts/web-01">web-01</a>', page)
    assert 'id="verify" data-complete="yes"' in page  # every event stored, chain sound
    assert "not in summary: web-03, web-04" in page
    assert '<span class="sgr-31">fatal: [web-01]: FAILED!' in page
    assert '<span class="sgr-32">ok: [web-00]</span>' in page
    assert page.count('<details class="fold fold-task') == 4
    assert 'class="fold fold-task has-failure"' in page
    assert "<svg" in page and "step 3" in page  # the task timeline
    jump = api.client.get("/ui/runs/1/next-failure?after=0")
    failed = next(e for e in api.store.events(1) if e.failed)
    assert jump.headers["location"] == f"/ui/runs/1?page=1#c{failed.counter}"
    assert f'id="c{failed.counter}"' in page


def test_missing_events_show_as_gaps(api: Api) -> None:
    api.store.ingest(job_run(3, drop=frozenset({7, 8, 9})))
    login(api)
    page = api.client.get("/ui/runs/1").text
    assert "events 7–9 are not stored" in page
    assert 'data-complete="incomplete"' in page
    assert "3 of" in page


def test_big_run_is_paginated(api: Api) -> None:
    api.store.ingest(job_run(400, hosts=10))  # 1 + 1 + 400 * 21 + 1 events
    login(api)
    page = api.client.get("/ui/runs/1").text
    assert page.count('class="blk') <= OUTPUT_PAGE
    assert "page 1 of 17" in page
    last = api.client.get("/ui/runs/1?page=17").text
    assert "PLAY RECAP" in last and "page 17 of 17" in last


def test_big_run_gets_its_verify_report_as_a_fragment(api: Api) -> None:
    """Above VERIFY_INLINE events the page carries no verdict of its own: a slot the script
    fills from the fragment route (a plain link without JavaScript)."""
    api.store.ingest(job_run(1000, hosts=20, in_summary=19))  # 41,003 events
    api.store.ingest(job_run(960, hosts=10, drop=frozenset({777})))  # 20,162 of 20,163
    login(api)
    page = api.client.get("/ui/runs/1").text
    assert 'id="verify"' not in page
    assert '<div id="verify-slot" data-src="/ui/runs/1/verify/fragment"' in page
    assert '<p class="dim" id="verifying" hidden>verifying…' in page
    assert re.search(r'<noscript><p>This run holds 41,003 events.*href="/ui/runs/1/verify"', page)
    assert "targeted 20 hosts, 19 in summary" in page
    fragment = api.client.get("/ui/runs/1/verify/fragment")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert fragment.text.startswith('<dl class="kv verify" id="verify" data-complete="yes"')
    assert "not in summary: web-19" in fragment.text
    # the incomplete run: nothing on its page says complete, and neither does its report
    lost = api.client.get("/ui/runs/2").text
    assert 'data-complete="incomplete"' in lost and 'id="verify-slot"' in lost
    for looks_complete in ('data-complete="complete"', 'data-complete="yes"', "chain ok"):
        assert looks_complete not in lost
    report = api.client.get("/ui/runs/2/verify/fragment").text
    assert 'data-complete="no"' in report and "<dt>Missing counters</dt><dd>1: 777</dd>" in report
    assert api.client.get("/ui/runs/9/verify/fragment").status_code == 404
    api.client.cookies.clear()  # a script's fetch gets a 401, not the login page
    assert api.client.get("/ui/runs/1/verify/fragment").status_code == 401


def _host_rows(page: str) -> list[str]:
    """The host names listed in the run page's host table."""
    table = page.split('<section id="hosts">', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<td><a href="/ui/runs/\d+/hosts/([^"]+)">', table)


def test_host_table_is_paged_with_totals_over_every_host(api: Api) -> None:
    # 250 hosts targeted, 240 in the recap; web-03 and web-140 fail
    api.store.ingest(job_run(2, hosts=250, fail=frozenset({(0, 3), (1, 140)}), in_summary=240))
    login(api)
    names = sorted(f"web-{i:02d}" for i in range(240))
    first = api.client.get("/ui/runs/1").text
    assert _host_rows(first) == names[:100]
    assert "targeted 250 hosts, 240 in summary" in first
    assert "hosts 1–100 of 240 · page 1 of 3" in first
    # totals over all 240 hosts: ok 2 each but the two failures, changed 1 each, 2 failures
    assert re.search(
        r'<tfoot><tr [^>]*><th>all 240 hosts</th><th class="num">478</th>'
        r'<th class="num">240</th><th class="num">2</th><th class="num">0</th>',
        first,
    )
    third = api.client.get("/ui/runs/1?page=2&hpage=3").text
    assert _host_rows(third) == names[200:] and "hosts 201–240 of 240 · page 3 of 3" in third
    assert "page 2 of 3" in third  # the output page is still the second
    # the host pager keeps the output page, the output pager keeps the host page
    assert '<a href="/ui/runs/1?page=2#hosts">« first</a>' in third
    assert '<a href="/ui/runs/1?page=2&amp;hpage=2#hosts">‹ previous</a>' in third
    assert 'href="/ui/runs/1?page=3&amp;hpage=3#output" rel="next"' in third
    assert "tfoot><tr" in third and "all 240 hosts</th>" in third

    failed = api.client.get("/ui/runs/1?page=2&hosts=failed").text
    assert _host_rows(failed) == ["web-03", "web-140"]
    assert "all 240 hosts</th>" in failed  # the totals still cover every host
    assert "<strong>only failed / unreachable (2)</strong>" in failed
    assert '<a href="/ui/runs/1?page=2#hosts">all 240 hosts</a>' in failed
    assert 'id="host-pager"' not in failed  # one page
    assert 'href="/ui/runs/1?page=3&amp;hosts=failed#output" rel="next"' in failed


def test_host_table_bad_values_and_runs_without_failures_or_recap(api: Api) -> None:
    api.store.ingest(job_run(1, hosts=150))  # 1: nobody failed
    api.store.ingest(job_run(1, hosts=4, finished=False))  # 2: no recap yet
    login(api)
    names = sorted(f"web-{i:02d}" for i in range(150))
    for bad in ("0", "-1", "x", "1.5"):
        r = api.client.get(f"/ui/runs/1?hpage={bad}")
        assert r.status_code == 400 and r.json()["code"] == "invalid_parameter", bad
    past = api.client.get("/ui/runs/1?hpage=99").text  # past the end: the last page
    assert _host_rows(past) == names[100:] and "page 2 of 2" in past
    bogus = api.client.get("/ui/runs/1?hosts=bogus").text
    assert "unknown host filter &#39;bogus&#39;" in bogus and _host_rows(bogus) == names[:100]
    none_failed = api.client.get("/ui/runs/1?hosts=failed&hpage=5").text
    assert _host_rows(none_failed) == [] and "No host failed or was unreachable." in none_failed
    assert "all 150 hosts</th>" in none_failed
    running = api.client.get("/ui/runs/2?hpage=3").text
    assert "No recap (stats event) stored yet" in running and _host_rows(running) == []


def test_events_page_filters_and_shows_event_data(api: Api) -> None:
    api.store.ingest(job_run(3, fail=frozenset({(1, 2)})))
    login(api)
    page = api.client.get("/ui/runs/1/events?failed=yes").text
    assert "1 matching event<" in page
    assert '<details class="data"><summary>event_data</summary>' in page
    assert "&#34;msg&#34;: &#34;boom on web-02&#34;" in page or "&quot;msg&quot;" in page
    by_host = api.client.get("/ui/runs/1/events?host=web-00&event=runner_on_ok").text
    assert "3 matching events" in by_host
    assert 'href="/ui/runs/1/hosts/web-00"' in by_host


def test_host_page(api: Api) -> None:
    api.store.ingest(job_run(3, fail=frozenset({(1, 2)})))
    api.store.ingest(job_run(1))
    login(api)
    page = api.client.get("/ui/runs/1/hosts/web-02").text
    assert "fatal: [web-02]: FAILED!" in page and "ok: [web-00]" not in page
    assert page.count('<details class="fold fold-task') == 3  # folded by task, no start events
    assert "Recent runs with this host" in page
    assert 'href="/ui/runs/2/hosts/web-02"' in page
    assert api.client.get("/ui/runs/99").status_code == 404


def test_host_page_recent_runs_come_from_the_index(api: Api) -> None:
    """web-04 is in run 1 (recap) and in run 34 (still running: events only); the 32 runs
    between them are of web-00 and web-01 only."""
    api.store.ingest(job_run(1, hosts=5, fail=frozenset({(0, 4)})))
    for _ in range(32):
        api.store.ingest(job_run(1, hosts=2))
    api.store.ingest(job_run(1, hosts=5, finished=False))
    login(api)
    page = api.client.get("/ui/runs/34/hosts/web-04").text
    assert re.findall(r'<tr data-run="(\d+)" data-source="(\w+)"', page) == [
        ("34", "events"),
        ("1", "recap"),
    ]
    assert "events only: no recap yet (still running)" in page
    row = page.split('<tr data-run="1" data-source="recap">', 1)[1].split("</tr>", 1)[0]
    assert '<td>recap</td><td class="num">0</td>' in row
    assert '<td class="num c-failed">1</td>' in row
    # 34 runs of web-00: 20 per page, then the older ones behind a keyset link
    newest = api.client.get("/ui/runs/34/hosts/web-00").text
    ids = [int(n) for n in re.findall(r'<tr data-run="(\d+)"', newest)]
    assert ids == list(range(34, 14, -1))
    assert 'href="/ui/runs/34/hosts/web-00?before=15#recent" rel="next">older runs' in newest
    older = api.client.get("/ui/runs/34/hosts/web-00?before=15").text
    assert [int(n) for n in re.findall(r'<tr data-run="(\d+)"', older)] == list(range(14, 0, -1))
    assert "older runs" not in older and 'href="/ui/runs/34/hosts/web-00#recent">« newest' in older


def test_recap_is_its_own_fold_and_no_failure() -> None:
    records = job_run(2, fail=frozenset({(0, 0)}))
    events = [r for r in records if isinstance(r, Event)]
    stats = events[-1]
    stats.failed = True  # the callback marks the recap of a failed run so
    folds = fold_output(events, 1, len(events))
    titles = ["PLAY [deploy]", "TASK [step 0]", "TASK [step 1]", "PLAY RECAP"]
    assert [f.title for f in folds] == titles
    assert [f.failures for f in folds] == [0, 1, 0, 0]
    assert "sgr-31" not in folds[-1].blocks[0].html


# --- the search of the whole output -------------------------------------------------------------
# job_run(60, hosts=4): task t starts at counter 3 + 9t, host h's result is 5 + 9t + 2h; the two
# failures ("boom on web-01" at 34, "boom on web-02" at 531) sit on output pages 1 and 2.
FAIL_1, FAIL_2 = 5 + 9 * 3 + 2 * 1, 5 + 9 * 58 + 2 * 2


def _search(api: Api, query: str) -> str:
    r = api.client.get(f"/ui/runs/1/search?{query}")
    assert r.status_code == 303, r.text
    return str(r.headers["location"])


def test_search_finds_a_match_on_another_page(api: Api) -> None:
    api.store.ingest(job_run(60, hosts=4, fail=frozenset({(3, 1), (58, 2)})))
    login(api)
    assert _search(api, "q=BOOM+ON+WEB-02&after=0") == (
        f"/ui/runs/1?page=2&q=BOOM+ON+WEB-02&at={FAIL_2}#c{FAIL_2}"
    )
    page = api.client.get(f"/ui/runs/1?page=2&q=BOOM+ON+WEB-02&at={FAIL_2}").text
    assert '<strong id="match-count">1</strong> event of the whole run matches' in page
    assert re.findall(r'class="blk[^"]*\bhit"', page) == ['class="blk o-failed hit"']
    assert f'id="c{FAIL_2}" class="blk o-failed hit"' in page
    assert f'name="after" value="{FAIL_2 - 1}"' in page  # a new search starts here
    assert f'href="/ui/runs/1/search?q=BOOM+ON+WEB-02&amp;after={FAIL_2}"' in page
    assert f'href="/ui/runs/1/search?q=BOOM+ON+WEB-02&amp;before={FAIL_2}"' in page
    assert 'href="/ui/runs/1?page=1&amp;q=BOOM+ON+WEB-02#output"' in page  # pages keep q
    # without the search, nothing is marked
    assert " hit" not in api.client.get("/ui/runs/1?page=2").text


def test_search_next_and_previous_cross_pages_and_wrap(api: Api) -> None:
    api.store.ingest(job_run(60, hosts=4, fail=frozenset({(3, 1), (58, 2)})))
    login(api)
    first = f"/ui/runs/1?page=1&q=boom+on&at={FAIL_1}#c{FAIL_1}"
    second = f"/ui/runs/1?page=2&q=boom+on&at={FAIL_2}#c{FAIL_2}"
    assert _search(api, "q=boom+on") == first
    assert _search(api, f"q=boom+on&after={FAIL_1}") == second  # next match
    # past the last match: from the top (and before the first: from the bottom)
    assert _search(api, f"q=boom+on&after={FAIL_2}") == first.replace("#", "&wrapped=yes#")
    assert _search(api, f"q=boom+on&before={FAIL_2}") == first  # previous match
    assert _search(api, f"q=boom+on&before={FAIL_1}") == second.replace("#", "&wrapped=yes#")
    assert _search(api, "q=boom+on&after=600") == first.replace("#", "&wrapped=yes#")
    page = api.client.get(f"/ui/runs/1?page=1&q=boom+on&at={FAIL_1}&wrapped=yes").text
    assert '<strong id="match-count">2</strong> events of the whole run match' in page
    assert '<span id="page-hits">1</span> on this page' in page and "search wrapped around" in page
    # on a page reached without a match (the pager), next starts at the page's first counter
    pager = api.client.get("/ui/runs/1?page=2&q=boom+on").text
    assert f'href="/ui/runs/1/search?q=boom+on&amp;after={OUTPUT_PAGE}"' in pager
    assert f'href="/ui/runs/1/search?q=boom+on&amp;before={OUTPUT_PAGE + 1}"' in pager


def test_search_without_a_match_or_a_query(api: Api) -> None:
    api.store.ingest(job_run(60, hosts=4, fail=frozenset({(3, 1)})))
    login(api)
    for text in ("no+such+output", "%25", "_", "boom%25"):  # % and _ are taken literally
        assert _search(api, f"q={text}&after=510") == f"/ui/runs/1?page=2&q={text}#output"
    page = api.client.get("/ui/runs/1?page=2&q=no+such+output").text
    assert '<strong id="match-count">0</strong> events of the whole run match' in page
    assert 'id="next-match"' not in page and " hit" not in page
    # an empty or blank query is no search at all
    for blank in ("", "+++", "%09"):
        assert _search(api, f"q={blank}&after=510") == "/ui/runs/1?page=2#output"
    assert 'id="search-status"' not in api.client.get("/ui/runs/1?q=+++").text
    assert api.client.get("/ui/runs/99/search?q=x").status_code == 404


def test_live_blocks_are_the_folds_blocks(api: Api) -> None:
    """The live tail folds what the UI stream sends: the server's own rendering of a block."""
    records = job_run(3, fail=frozenset({(1, 2)}))
    events = [r for r in records if isinstance(r, Event)]
    blocks = [b for f in fold_output(events, 1, len(events)) for b in f.blocks]
    shown = [live_block(e) for e in events if e.stdout]
    assert [b["html"] for b in shown] == [str(b.html) for b in blocks]
    assert [b["css"] for b in shown] == [b.css for b in blocks]
    api.store.ingest(records)
    login(api)
    r = api.client.get("/ui/runs/1/stream?after=0")
    messages = _sse(r.text)
    assert [m[0] for m in messages] == ["event"] * len(events) + ["end"]
    first_task = next(m[1] for m in messages if m[1]["title"] == "TASK [step 0]")
    assert first_task["opens"] is True and first_task["kind"] == "task"
    assert json.loads(json.dumps(messages[1][1])) == live_block(events[1])
    assert "event_data" not in messages[1][1]
