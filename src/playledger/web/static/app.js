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
  function mark(block) {
    document.querySelectorAll(".blk.target").forEach((b) => b.classList.remove("target"));
    block.classList.add("target");
    const fold = block.closest("details");
    if (fold) fold.open = true;
    block.scrollIntoView({ block: "center" });
    history.replaceState(null, "", "#c" + block.dataset.counter);
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

  // Find on this page: highlight the blocks holding the text, jump to the first.
  const find = document.getElementById("find");
  if (find && output) {
    find.hidden = false;
    find.addEventListener("change", function () {
      const q = find.value.toLowerCase();
      let first = null;
      output.querySelectorAll(".blk").forEach((b) => {
        const hit = q !== "" && b.textContent.toLowerCase().includes(q);
        b.classList.toggle("hit", hit);
        if (hit && !first) first = b;
      });
      if (first) mark(first);
    });
  }

  // Live: a running run follows the event stream; the stored counter and (on the last
  // page) the output grow in place; at the stream's end the page reloads with the verdict.
  if (run && run.dataset.live === "yes" && window.EventSource) {
    const stored = document.getElementById("stored");
    const live = document.getElementById("live");
    const onLastPage = run.dataset.lastPage === "yes";
    let count = Number(stored.textContent.replace(/,/g, ""));
    let tail = null;
    if (onLastPage && output) {
      tail = document.createElement("pre");
      tail.className = "live-tail";
      output.appendChild(tail);
    }
    const es = new EventSource("/ui/runs/" + run.dataset.run + "/stream?after=" + run.dataset.top);
    es.addEventListener("open", () => { live.hidden = false; });
    es.addEventListener("event", function (msg) {
      const e = JSON.parse(msg.data);
      count += 1;
      stored.textContent = count.toLocaleString("en-US");
      if (tail && e.stdout) {
        const span = document.createElement("span");
        span.className = "blk o-" + outcome(e);
        span.id = "c" + e.counter;
        span.dataset.counter = e.counter;
        span.textContent = e.stdout + "\n";
        tail.appendChild(span);
      }
    });
    es.addEventListener("end", function () { es.close(); location.reload(); });
    es.addEventListener("error", () => { live.hidden = true; });
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
  function outcome(e) {
    if (e.event === "runner_on_unreachable") return "unreachable";
    if (e.failed || e.event.endsWith("_failed")) return "failed";
    if (e.event.endsWith("skipped")) return "skipped";
    if (e.event.endsWith("_ok")) return e.changed ? "changed" : "ok";
    return "plain";
  }
})();
