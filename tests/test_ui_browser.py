"""The web UI in a real browser: Debian's Chromium (never a downloaded one) driven by
Playwright against a real `playledger serve` process on loopback, with auth on.

Screenshots of each page land in tests/artifacts/ui/ (ignored by git) for a human look."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from conftest import Env
from playledger.events import Event, RunEnd, RunStart
from playledger.store import open_store
from playledger.web.views import OUTPUT_PAGE
from test_api_e2e import Server, wait_for
from test_faults import LONG_PLAYBOOK, child, children, kill9, playledger_run, spool_events
from uifactories import job_run

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@dataclass
class Served:
    server: Server
    live_rest: list[RunStart | Event | RunEnd]  # what run 3 has not stored yet
    big_live_rest: list[RunStart | Event | RunEnd] = field(default_factory=list)  # of run 5

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture
def served(env: Env) -> Iterator[Served]:
    """A server over a SQLite store holding: 1 a run with a failure deep in its output,
    2 a run whose events 20-29 were lost, 3 a run still going (15 events so far),
    4 a run of 20,163 events, 5 a run still going with two pages of output (549 events)."""
    live = job_run(5)
    big_live = job_run(30, hosts=10)  # 2 + 30 * 21 + 1 events
    store = open_store(env.db)
    try:
        store.ingest(job_run(60, hosts=4, fail=frozenset({(3, 1), (58, 2)})))
        store.ingest(job_run(5, drop=frozenset(range(20, 30))))
        store.ingest(live[:16])
        store.ingest(job_run(960, hosts=10))  # 2 + 960 * 21 + 1 events
        store.ingest(big_live[:550])
    finally:
        store.close()
    srv = Server(env, env.db)
    srv.start()
    yield Served(srv, live[16:], big_live[550:])
    srv.stop()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def logged_in(browser: Browser, served: Served) -> Page:
    server = served.server
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server.url}/ui/")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    shot(page, "login")
    token = server.token("read", "browser")
    page.fill("input[name=token]", token)
    page.click("form[action='/ui/login'] button[type=submit]")
    expect(page).to_have_url(f"{server.url}/ui/")
    assert token not in page.url
    cookie = next(c for c in page.context.cookies() if c["name"] == "playledger_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    return page


def test_runs_run_events_and_host_pages(browser: Browser, served: Served) -> None:
    page = logged_in(browser, served)
    # Runs: incomplete and running runs say so.
    expect(page.locator("tr[data-run='2'] .badge")).to_have_text("incomplete")
    expect(page.locator("tr[data-run='2'] .reason")).to_contain_text("10 of")
    expect(page.locator("tr[data-run='3'] .badge")).to_have_text("still running")
    expect(page.locator("tr[data-run='1'] .badge")).to_have_text("complete")
    shot(page, "runs")

    # Run: host summary, verify, coloured output, jump to the failures in turn.
    page.click("tr[data-run='1'] td a >> nth=0")
    expect(page.locator("table.hosts tbody tr")).to_have_count(4)
    expect(page.locator("#verify")).to_have_attribute("data-complete", "yes")
    red = page.locator(".output .sgr-31").first
    expect(red).to_contain_text("fatal: [web-01]: FAILED!")
    assert red.evaluate("e => getComputedStyle(e).color") == "rgb(241, 76, 76)"
    shot(page, "run")
    page.click("#next-failure")
    target = page.locator(".blk.target")
    expect(target).to_contain_text("fatal: [web-01]")
    expect(target).to_be_in_viewport()
    shot(page, "run-failure")
    # the second failure is on page 2 of the output: the server finds it ("n" = the button)
    page.keyboard.press("n")
    expect(page).to_have_url(re.compile(r"/ui/runs/1\?page=2#c\d+$"))
    expect(page.locator(".blk.target")).to_contain_text("fatal: [web-02]")
    expect(page.locator(".blk.target")).to_be_in_viewport()

    # Events: filter, open one event's data.
    page.goto(f"{served.url}/ui/runs/1/events")
    page.select_option("select[name=failed]", "yes")
    page.click("form.filters button[type=submit]")
    expect(page.locator("tr.event-row")).to_have_count(2)
    data = page.locator("tr.event-row details.data").first
    expect(data.locator("pre")).not_to_be_visible()
    data.locator("summary").click()
    expect(data.locator("pre")).to_be_visible()
    expect(data.locator("pre")).to_contain_text('"msg": "boom on web-01"')
    shot(page, "events")

    # Host: from the events table to the host's own page.
    page.click("tr.event-row >> nth=0 >> a:has-text('web-01')")
    expect(page.locator("h1")).to_contain_text("web-01")
    expect(page.locator(".output")).to_contain_text("fatal: [web-01]")
    expect(page.locator(".output")).not_to_contain_text("web-03")
    shot(page, "host")

    # A run with lost events: the badge and the gap in the output.
    page.goto(f"{served.url}/ui/runs/2")
    expect(page.locator(".run-head .badge")).to_have_text("incomplete")
    expect(page.locator(".output .gap")).to_have_text(re.compile("events 20–29 are not stored"))
    expect(page.locator("#verify")).to_have_attribute("data-complete", "no")
    page.close()


def test_big_run_opens_one_page_of_output(browser: Browser, served: Served) -> None:
    page = logged_in(browser, served)
    page.goto(f"{served.url}/ui/runs/4")
    expect(page.locator(".run-head .badge")).to_have_text("complete")
    blocks = page.locator(".output .blk").count()
    assert 0 < blocks <= OUTPUT_PAGE, blocks
    expect(page.locator("#output .dim").first).to_contain_text("page 1 of 41")
    # above VERIFY_INLINE events the report is fetched after the page: it appears in place
    expect(page.locator("#verify")).to_have_attribute("data-complete", "yes")
    expect(page.locator("#verify-section")).to_contain_text("ok (20,163 checked)")
    expect(page.locator("#verifying")).to_have_count(0)
    shot(page, "big-run")
    page.click("#output nav.pager >> nth=0 >> text=last »")
    expect(page.locator(".output")).to_contain_text("PLAY RECAP")
    assert page.locator(".output .blk").count() <= OUTPUT_PAGE
    page.close()


@pytest.fixture
def many_hosts(env: Env) -> Iterator[Server]:
    """1: 250 hosts (web-03 and web-140 fail); 2-36: runs of web-00 and web-01 only;
    37: 250 hosts, still running (no recap); 38: 20,163 events, event 777 lost."""
    store = open_store(env.db)
    try:
        store.ingest(job_run(2, hosts=250, fail=frozenset({(0, 3), (1, 140)})))
        for _ in range(35):
            store.ingest(job_run(1, hosts=2))
        store.ingest(job_run(2, hosts=250, finished=False))
        store.ingest(job_run(960, hosts=10, drop=frozenset({777})))
    finally:
        store.close()
    srv = Server(env, env.db)
    srv.start()
    yield srv
    srv.stop()


def test_host_table_pages_and_a_hosts_older_runs(browser: Browser, many_hosts: Server) -> None:
    url = many_hosts.url
    page = logged_in(browser, Served(many_hosts, []))
    page.goto(f"{url}/ui/runs/1")
    rows = page.locator("table.hosts tbody tr")
    expect(rows).to_have_count(100)
    expect(page.locator("table.hosts tfoot")).to_contain_text("all 250 hosts")
    # output page 2 first, then the host table's pages: each keeps the other's position
    page.click("#output nav.pager >> nth=0 >> text=next ›")
    expect(page.locator("#output .dim").first).to_contain_text("page 2 of 3")
    page.click("#host-pager >> text=next ›")
    expect(page).to_have_url(re.compile(r"/ui/runs/1\?page=2&hpage=2#hosts$"))
    expect(page.locator("#host-pager .dim")).to_have_text("hosts 101–200 of 250 · page 2 of 3")
    expect(page.locator("#output .dim").first).to_contain_text("page 2 of 3")
    page.click("#host-pager >> text=last »")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("web-50")  # byte order: web-49 < web-50 < web-51
    shot(page, "host-table")
    page.click("#host-filter >> text=only failed / unreachable")
    expect(rows).to_have_count(2)
    expect(page.locator("table.hosts tr.row-failed")).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("web-140")
    expect(page.locator("table.hosts tfoot")).to_contain_text("all 250 hosts")
    expect(page.locator("#output .dim").first).to_contain_text("page 2 of 3")

    # web-140's page in the running run 37: its runs reach back past 35 newer runs
    page.goto(f"{url}/ui/runs/37/hosts/web-140")
    recent = page.locator("table.recent-runs tbody tr")
    expect(recent).to_have_count(2)
    expect(recent.nth(0)).to_have_attribute("data-run", "37")
    expect(recent.nth(0)).to_contain_text("events only: no recap yet (still running)")
    expect(recent.nth(1)).to_have_attribute("data-run", "1")
    expect(recent.nth(1)).to_contain_text("recap")
    shot(page, "host-recent-runs")
    recent.nth(1).locator("a").first.click()
    expect(page).to_have_url(f"{url}/ui/runs/1/hosts/web-140")
    expect(page.locator(".output")).to_contain_text("fatal: [web-140]: FAILED!")
    page.close()


def test_incomplete_big_run_never_looks_complete_while_verifying(
    browser: Browser, many_hosts: Server
) -> None:
    """The fragment is held back in the browser to look at the page while it loads."""
    page = logged_in(browser, Served(many_hosts, []))
    held: list[Route] = []
    page.route("**/verify/fragment", lambda route: held.append(route))
    page.goto(f"{many_hosts.url}/ui/runs/38")
    expect(page.locator("#verifying")).to_be_visible()
    expect(page.locator("#verifying")).to_contain_text("verifying… (reading all 20,162 events")
    expect(page.locator(".run-head .badge")).to_have_text("incomplete")
    expect(page.locator("#verify")).to_have_count(0)
    assert page.locator("[data-complete='complete'], [data-complete='yes']").count() == 0
    for _ in range(100):  # bounded: the request was made when the page loaded
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    shot(page, "verifying")
    held[0].continue_()
    expect(page.locator("#verify")).to_have_attribute("data-complete", "no")
    expect(page.locator("#verify-section")).to_contain_text("1: 777")
    expect(page.locator("#verifying")).to_have_count(0)
    assert page.locator("[data-complete='complete'], [data-complete='yes']").count() == 0
    page.close()


def search(page: Page, text: str) -> None:
    page.fill("#search input[name=q]", text)
    page.press("#search input[name=q]", "Enter")


def test_search_the_whole_output(browser: Browser, served: Served) -> None:
    page = logged_in(browser, served)
    # A banner that exists only on the last of 41 output pages, found from page 1.
    page.goto(f"{served.url}/ui/runs/4")
    expect(page.locator("#output .dim").first).to_contain_text("page 1 of 41")
    search(page, "task [STEP 959]")
    at_41 = r"/ui/runs/4\?page=41&q=task\+%5BSTEP\+959%5D&at=20142#c20142$"  # 3 + 21 * 959
    expect(page).to_have_url(re.compile(at_41))
    expect(page.locator("#match-count")).to_have_text("1")
    hit = page.locator(".blk.hit")
    expect(hit).to_have_count(1)
    expect(hit).to_have_class(re.compile(r"\btarget\b"))
    expect(hit).to_be_in_viewport()
    expect(hit.locator("mark")).to_have_text("TASK [step 959]")  # the text as it is, marked
    shot(page, "run-search")

    # Run 1: "boom on" is on page 1 (web-01) and page 2 (web-02); next / previous cross pages.
    page.goto(f"{served.url}/ui/runs/1")
    search(page, "Boom On")
    expect(page).to_have_url(re.compile(r"\?page=1&q=Boom\+On&at=\d+#c\d+$"))
    expect(page.locator("#match-count")).to_have_text("2")
    expect(page.locator(".blk.target")).to_contain_text("boom on web-01")
    page.click("#next-match")
    expect(page).to_have_url(re.compile(r"\?page=2&q=Boom\+On&at=\d+#c\d+$"))
    expect(page.locator(".blk.target")).to_contain_text("boom on web-02")
    expect(page.locator(".blk.target mark")).to_have_text("boom on")
    page.click("#prev-match")
    expect(page).to_have_url(re.compile(r"\?page=1&q=Boom\+On&at=\d+#c\d+$"))
    expect(page.locator(".blk.target")).to_contain_text("boom on web-01")
    expect(page.locator(".blk.target")).to_be_in_viewport()
    page.click("#prev-match")  # before the first: around to the last
    expect(page.locator("#wrapped")).to_be_visible()
    expect(page.locator(".blk.target")).to_contain_text("boom on web-02")

    # Many matches on one page: next / previous move on the page without a request. web-03's
    # results are at 11 + 9t; "changed: [web-03]" (t = 1, 5, 9 ...) is no match.
    page.goto(f"{served.url}/ui/runs/1")
    search(page, "OK: [WEB-03]")
    expect(page).to_have_url(re.compile(r"\?page=1&q=OK%3A\+%5BWEB-03%5D&at=11#c11$"))
    page.evaluate("window.samePage = true")
    page.click("#next-match")
    expect(page).to_have_url(re.compile(r"&at=29#c29$"))
    page.click("#next-match")
    expect(page).to_have_url(re.compile(r"&at=38#c38$"))
    page.click("#prev-match")
    expect(page).to_have_url(re.compile(r"&at=29#c29$"))
    expect(page.locator(".blk.target")).to_contain_text("ok: [web-03]")
    assert page.evaluate("window.samePage") is True
    hits = page.locator(".blk.hit").count()
    assert hits == page.locator(".blk.hit mark").count() == 41, hits  # t <= 54, t % 4 != 1

    # Nothing found, then an empty query: no search.
    search(page, "no such output")
    expect(page.locator("#match-count")).to_have_text("0")
    expect(page.locator("#next-match")).to_have_count(0)
    search(page, "   ")
    expect(page.locator("#search-status")).to_have_count(0)
    expect(page).not_to_have_url(re.compile(r"q="))
    page.close()


def fold_view(page: Page) -> list[list[object]]:
    """Each fold of the output as the DOM holds it: class, task, title, count, blocks."""
    folds: list[list[object]] = page.eval_on_selector_all(
        ".output details.fold",
        """folds => folds.map(d => [d.className, d.dataset.task,
            d.querySelector('.fold-title').textContent, d.querySelector('.blocks').textContent,
            Array.from(d.querySelectorAll('pre .blk')).map(b => b.outerHTML)])""",
    )
    return folds


def test_live_run_folds_new_events_in_place(browser: Browser, served: Served) -> None:
    page = logged_in(browser, served)
    page.goto(f"{served.url}/ui/runs/3")
    expect(page.locator(".run-head .badge")).to_have_text("still running")
    expect(page.locator("#live")).to_be_visible()
    before = page.locator("#stored").inner_text()
    assert before == "15"  # the run start is no event
    step_1 = page.locator(".output details.fold-task", has_text="TASK [step 1]")
    expect(step_1.locator(".blk")).to_have_count(3)  # its banner and two of three hosts
    page.evaluate("window.notReloaded = true")
    # the rest of run 3 arrives while the page is open
    store = open_store(served.server.vars["PLAYLEDGER_DB"])
    try:
        store.ingest(served.live_rest[:10])  # counters 16-25: step 1's last host, step 2, 3
        expect(page.locator("#stored")).to_have_text("25")
        expect(step_1.locator(".blk")).to_have_count(4)
        expect(step_1.locator(".blk").last).to_contain_text("ok: [web-02]")
        expect(step_1.locator(".blocks")).to_have_text("4 line blocks")
        step_2 = page.locator(".output details.fold-task", has_text="TASK [step 2]")
        expect(step_2.locator(".blk")).to_have_count(4)
        expect(step_2.locator(".blk.o-changed .sgr-33")).to_contain_text("changed: [web-02]")
        expect(page.locator(".output details.fold-task", has_text="TASK [step 3]")).to_have_count(1)
        folded = page.locator(".output details pre .blk").count()
        assert page.locator(".output .blk").count() == folded  # none after the folds
        assert page.evaluate("window.notReloaded") is True
        live = fold_view(page)
        store.ingest(served.live_rest[10:])
    finally:
        store.close()
    # at the stream's end the page reloads with the final verdict, folded by the server: every
    # fold the live page had built (but the last, still growing then) is the server's own
    expect(page.locator(".run-head .badge")).to_have_text("complete", timeout=30_000)
    assert page.evaluate("window.notReloaded") is None
    served_folds = fold_view(page)
    assert len(live) == 5 and live[:-1] == served_folds[: len(live) - 1]
    shot(page, "live-done")
    page.close()


def test_live_run_elsewhere_than_its_last_page(browser: Browser, served: Served) -> None:
    page = logged_in(browser, served)
    page.goto(f"{served.url}/ui/runs/5")  # page 1 of 2: counters 1-500
    expect(page.locator("#live")).to_be_visible()
    expect(page.locator("#stored")).to_have_text("549")
    blocks = page.locator(".output .blk").count()
    store = open_store(served.server.vars["PLAYLEDGER_DB"])
    try:
        store.ingest(served.big_live_rest[:10])
        expect(page.locator("#stored")).to_have_text("559")
        expect(page.locator("#new-events")).to_have_text("10 new events — go to the end")
        assert page.locator(".output .blk").count() == blocks  # page 1 stays as it is
        page.click("#new-events a")
        expect(page).to_have_url(re.compile(r"/ui/runs/5\?page=2#output-end$"))
        expect(page.locator("#stored")).to_have_text("559")
        expect(page.locator("#live")).to_be_visible()
        store.ingest(served.big_live_rest[10:20])  # on the last page: folded in place
        expect(page.locator("#stored")).to_have_text("569")
        expect(page.locator("#c569")).to_have_count(1)
        expect(page.locator("#new-events")).to_be_hidden()
        # With a search on, new matching events are counted and marked as they arrive.
        page.goto(f"{served.url}/ui/runs/5?page=2&q=WEB-03")
        expect(page.locator("#live")).to_be_visible()
        total = int(page.locator("#match-count").inner_text().replace(",", ""))
        here = int(page.locator("#page-hits").inner_text())
        assert here == page.locator(".blk.hit").count() > 0
        more = served.big_live_rest[20:41]
        new = [e.counter for e in more if isinstance(e, Event) and "web-03" in e.stdout.lower()]
        assert new, "the next task has a result of web-03"
        store.ingest(more)
        expect(page.locator(f"#c{new[-1]}.hit mark")).to_have_text("web-03")
        expect(page.locator("#match-count")).to_have_text(f"{total + len(new):,}")
        expect(page.locator("#page-hits")).to_have_text(str(here + len(new)))
        expect(page.locator(".blk.hit")).to_have_count(here + len(new))
    finally:
        store.close()
    page.close()


FAILING_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: greet
      debug: msg="hello {{ inventory_hostname }}"
    - name: break one host
      command: /bin/false
      when: inventory_hostname == "node-1"
    - name: after the failure
      command: echo done
"""


def test_real_ansible_runs(browser: Browser, env: Env) -> None:
    """Runs recorded from real ansible-playbook: one with a failed host, one killed -9."""
    env.inventory(["node-0", "node-1", "node-2"], name="three.ini")
    env.write("fails.yml", FAILING_PLAYBOOK)
    done = env.playledger("run", "fails.yml", "-i", "three.ini", timeout=300)
    assert done.returncode != 0, done.stdout  # node-1 failed

    env.inventory([f"node-{i}" for i in range(4)], extra="nap=0.4")
    env.write("long.yml", LONG_PLAYBOOK)
    workers: list[int] = []
    with playledger_run(env, "long.yml", "-i", "hosts.ini", "-f", "2") as run:
        ansible = wait_for(lambda: child(run.pid, "ansible-playbook"), 60, "ansible-playbook")
        try:
            wait_for(lambda: spool_events(env) >= 20, 120, "20 events in the spool")
            os.kill(ansible, signal.SIGSTOP)  # no new worker between the listing and the kill
            workers = [pid for pid, _ in children(ansible)]
            kill9(ansible)
        finally:
            for pid in workers:
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        assert run.wait(timeout=120) != 0

    server = Server(env, env.db)
    server.start()
    try:
        page = logged_in(browser, Served(server, []))
        expect(page.locator("tr[data-run='2'] .badge")).to_have_text("incomplete")
        expect(page.locator("tr[data-run='2'] .reason")).to_contain_text("no final record")
        expect(page.locator("tr[data-run='1'] .badge")).to_have_text("complete")
        shot(page, "real-runs")
        page.goto(f"{server.url}/ui/runs/2")
        expect(page.locator(".run-head .status")).to_have_text("aborted")
        expect(page.locator(".run-head .badge")).to_have_text("incomplete")
        expect(page.locator("#verify")).to_have_attribute("data-complete", "no")

        page.goto(f"{server.url}/ui/runs/1")
        expect(page.locator("table.hosts tbody tr")).to_have_count(3)
        expect(page.locator("table.hosts tr.row-failed")).to_contain_text("node-1")
        expect(page.locator("#verify")).to_have_attribute("data-complete", "yes")
        expect(page.locator(".output .sgr-32").first).to_contain_text("ok: [node-0]")
        page.click("#next-failure")
        target = page.locator(".blk.target")
        expect(target).to_contain_text("fatal: [node-1]: FAILED!")
        expect(target).to_be_in_viewport()
        expect(page.locator("svg.timeline")).to_contain_text("break one host")
        page.emulate_media(color_scheme="dark")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(18, 20, 24)", background
        page.screenshot(path=str(ARTIFACTS / "run-dark.png"), full_page=True)
        page.close()
    finally:
        server.stop()
