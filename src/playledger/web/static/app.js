// playledger UI: progressive enhancement only; every page reads fine without this file.
"use strict";
(function () {
  const run = document.getElementById("run");
  const output = document.querySelector("#output .output");

  // Jump to next failure: the next failed block below the viewport on this page, else the
  // server finds the page holding the next one (the link's own href, which works without JS).
  const jump = document.getElementById("next-failure");
  if (jump && output) {
    jump.addEventListener("click", function (ev) {
      const marker = document.querySelector(".blk.target");
      const from = marker ? Number(marker.dataset.counter) : 0;
      const blocks = output.querySelectorAll(".blk.o-failed, .blk.o-unreachable");
      for (const b of blocks) {
        if (Number(b.dataset.counter) > from) {
          ev.preventDefault();
          mark(b);
          return;
        }
      }
      // none below on this page: the link asks the server for the next page with one
    });
  }
  // "n" jumps to the next failure (not while typing in a field).
  document.addEventListener("keydown", function (ev) {
    const typing = ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement;
    if (jump && ev.key === "n" && !typing && !ev.ctrlKey && !ev.metaKey && !ev.altKey) {
      jump.click();
    }
  });
  // The current position: outlined, its fold open, in view, and in the URL (with a search,
  // `at` is where the next search goes on from after a reload).
  function mark(block) {
    document.querySelectorAll(".blk.target").forEach((b) => b.classList.remove("target"));
    block.classList.add("target");
    const fold = block.closest("details");
    if (fold) fold.open = true;
    block.scrollIntoView({ block: "center" });
    const url = new URL(location.href);
    if (url.searchParams.has("q")) url.searchParams.set("at", block.dataset.counter);
    url.hash = "c" + block.dataset.counter;
    history.replaceState(null, "", url);
  }
  function position(fallback) {
    const marker = document.querySelector(".blk.target");
    return marker ? Number(marker.dataset.counter) : fallback;
  }
  if (location.hash.startsWith("#c")) {
    const b = document.getElementById(location.hash.slice(1));
    if (b) mark(b);
  }

  // Collapse / expand every fold of the page.
  const foldAll = document.getElementById("fold-all");
  if (foldAll && output) {
    foldAll.hidden = false;
    foldAll.addEventListener("click", function () {
      const open = foldAll.textContent === "Collapse all";
      output.querySelectorAll("details.fold").forEach((d) => { d.open = !open; });
      foldAll.textContent = open ? "Expand all" : "Collapse all";
    });
  }

  // Search of the whole output: the server counts the matches of the run, finds them on any
  // page and marks this page's (.blk.hit). Here the matched text is highlighted, and next /
  // previous move within the page when they can (else their links ask the server).
  const form = document.getElementById("search");
  const status = document.getElementById("search-status");
  if (form) {
    form.addEventListener("submit", function () {
      // Enter on the same text goes on to the next match; a new text starts at the position.
      const same = status && form.elements.q.value.trim() === status.dataset.q;
      const marker = document.querySelector(".blk.target");
      if (marker) form.elements.after.value = Number(marker.dataset.counter) - (same ? 0 : 1);
    });
  }
  if (status && output) {
    output.querySelectorAll(".blk.hit").forEach((b) => highlight(b, status.dataset.q));
    const hits = () => Array.from(output.querySelectorAll(".blk.hit"));
    const next = document.getElementById("next-match");
    const prev = document.getElementById("prev-match");
    if (next) {
      next.addEventListener("click", function (ev) {
        ev.preventDefault();
        const from = position(Number(next.dataset.after));
        const hit = hits().find((b) => Number(b.dataset.counter) > from);
        if (hit) mark(hit);
        else location.href = withParam(next.href, "after", from);
      });
    }
    if (prev) {
      prev.addEventListener("click", function (ev) {
        ev.preventDefault();
        const from = position(Number(prev.dataset.before));
        const before = hits().filter((b) => Number(b.dataset.counter) < from);
        if (before.length) mark(before[before.length - 1]);
        else location.href = withParam(prev.href, "before", from);
      });
    }
  }
  function withParam(href, name, value) {
    const url = new URL(href, location.href);
    url.searchParams.set(name, value);
    return url.toString();
  }
  // Wrap each occurrence of `q` (any case) in <mark>, text node by text node.
  function highlight(block, q) {
    const needle = q.toLowerCase();
    const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const text = node.nodeValue;
      const lower = text.toLowerCase();
      let at = needle ? lower.indexOf(needle) : -1;
      if (at < 0 || lower.length !== text.length) continue; // lengths differ: offsets would not match
      const parts = document.createDocumentFragment();
      let pos = 0;
      while (at >= 0) {
        parts.append(text.slice(pos, at));
        const m = document.createElement("mark");
        m.textContent = text.slice(at, at + needle.length);
        parts.append(m);
        pos = at + needle.length;
        at = lower.indexOf(needle, pos);
      }
      parts.append(text.slice(pos));
      node.replaceWith(parts);
    }
  }

  // Live: a running run follows the event stream (each event rendered by the server,
  // views.live_block). The stored counter grows; on the last output page each event goes into
  // its play / task fold as the server folds it; elsewhere (or past this page's counters) the
  // page only offers a link to the end. At the stream's end the page reloads with the verdict.
  if (run && run.dataset.live === "yes" && window.EventSource) {
    const stored = document.getElementById("stored");
    const live = document.getElementById("live");
    const upto = document.getElementById("upto");
    const notice = document.getElementById("new-events");
    const template = document.getElementById("fold-template");
    const pageEnd = Number(run.dataset.pageEnd);
    const pageSize = Number(run.dataset.pageSize);
    let count = Number(stored.textContent.replace(/,/g, ""));
    let top = Number(run.dataset.top);
    let unseen = 0;
    const inPlace = run.dataset.lastPage === "yes" && output && template;
    const fold = inPlace ? folder(output, template, top) : null;
    // With a search on, a new event whose output matches is counted (and, when it lands on
    // this page, marked). JavaScript folds case beyond ASCII where SQLite does not: the count
    // may differ from the server's for such text until the page reloads.
    const q = status ? status.dataset.q : "";
    const bump = (id) => {
      const el = document.getElementById(id);
      if (el) el.textContent = (Number(el.textContent.replace(/,/g, "")) + 1).toLocaleString("en-US");
    };
    const es = new EventSource("/ui/runs/" + run.dataset.run + "/stream?after=" + top);
    es.addEventListener("open", () => { live.hidden = false; });
    es.addEventListener("event", function (msg) {
      const e = JSON.parse(msg.data);
      count += 1;
      top = Math.max(top, e.counter);
      stored.textContent = count.toLocaleString("en-US");
      const probe = document.createElement("span");
      probe.innerHTML = e.html || "";
      const hit = q !== "" && probe.textContent.toLowerCase().includes(q.toLowerCase());
      if (hit) bump("match-count");
      if (fold && e.counter <= pageEnd) {
        fold(e);
        upto.textContent = e.counter.toLocaleString("en-US");
        const placed = document.getElementById("c" + e.counter);
        if (hit && placed) {
          placed.classList.add("hit");
          highlight(placed, q);
          bump("page-hits");
        }
        return;
      }
      unseen += 1;
      const link = notice.querySelector("a");
      link.textContent = unseen.toLocaleString("en-US") + " new event" +
        (unseen === 1 ? "" : "s") + " — go to the end";
      link.href = "/ui/runs/" + run.dataset.run + "?page=" + Math.ceil(top / pageSize) +
        (q ? "&q=" + encodeURIComponent(q) : "") + "#output-end";
      notice.hidden = false;
    });
    es.addEventListener("end", function () { es.close(); location.reload(); });
    es.addEventListener("error", () => { live.hidden = true; });
  }

  // The steps of views.fold_output, for events arriving one by one after counter `top`;
  // folds are clones of the server's own (the #fold-template), blocks its rendered HTML.
  function folder(output, template, top) {
    let expected = top + 1;
    const continued = Number(output.dataset.first) > 1;
    const folds = output.querySelectorAll("details.fold");
    let task = folds.length ? folds[folds.length - 1].dataset.task || null : null;
    const last = output.lastElementChild;
    let current = last && last.matches("details.fold") ? last : null;

    function open(title, kind, cont) {
      const d = template.content.firstElementChild.cloneNode(true);
      d.className = "fold fold-" + kind;
      d.querySelector(".fold-title").textContent = (cont ? "(continued) " : "") + title;
      output.appendChild(d);
      return d;
    }
    function add(fold, e) {
      const pre = fold.querySelector("pre");
      const span = document.createElement("span");
      span.id = "c" + e.counter;
      span.className = "blk" + (e.css ? " o-" + e.css : "");
      span.dataset.counter = e.counter;
      span.innerHTML = e.html; // escaped and coloured by the server (views.block_html)
      pre.append(span, "\n");
      const n = pre.querySelectorAll(".blk").length;
      fold.querySelector(".blocks").textContent = n + " line block" + (n === 1 ? "" : "s");
      const failures = pre.querySelectorAll(".blk.o-failed, .blk.o-unreachable").length;
      if (failures) {
        fold.classList.add("has-failure");
        let pill = fold.querySelector(".pill-failed");
        if (!pill) {
          pill = document.createElement("span");
          pill.className = "pill pill-failed";
          fold.querySelector(".blocks").before(pill, " ");
        }
        pill.textContent = failures + " failed";
      }
    }
    return function (e) {
      if (e.counter > expected) {
        const gap = document.createElement("div");
        gap.className = "gap";
        gap.setAttribute("role", "note");
        gap.textContent = "⚠ " + gapTitle(expected, e.counter - 1);
        output.appendChild(gap);
        current = null;
      }
      expected = Math.max(expected, e.counter + 1);
      if (e.opens) {
        current = open(e.title, e.kind, false);
      } else if (!current || (e.task_uuid && e.task_uuid !== task)) {
        if (!e.html) return; // nothing to show, no empty fold
        current = open(e.title, e.kind, continued);
      }
      if (e.play_start) task = null;
      else if (e.task_uuid && e.html) task = e.task_uuid;
      current.dataset.task = task || "";
      if (e.html) add(current, e);
    };
  }
  function gapTitle(lo, hi) {
    const n = (x) => x.toLocaleString("en-US");
    return lo === hi ? "event " + n(lo) + " is not stored" : "events " + n(lo) + "–" + n(hi) + " are not stored";
  }

  // A big run's verify report (it reads every event) is fetched once the page is shown;
  // until it arrives the section says "verifying…" and shows no verdict at all.
  const slot = document.getElementById("verify-slot");
  if (slot && window.fetch) {
    const waiting = document.getElementById("verifying");
    waiting.hidden = false;
    fetch(slot.dataset.src, { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok || r.redirected) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) { slot.innerHTML = html; })
      .catch(function (err) {
        waiting.className = "warn";
        waiting.textContent = "The verify report could not be loaded (" + err.message + "): ";
        const link = document.createElement("a");
        link.href = slot.dataset.src.replace(/\/fragment$/, "");
        link.textContent = "open it on its own page";
        waiting.appendChild(link);
      });
  }
})();
