"""Job output: the text Ansible's default callback prints for each event, and its colours.

The callback stores plain text in `stdout`; colour is applied when shown, from the event kind,
the way the default callback colours it (green ok, yellow changed, red failed, cyan skipped).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from playledger.events import Event

# Ansible's Display uses max(79, terminal width - 1) columns; without a terminal, 79.
COLUMNS = 79

# The default callback's colour per outcome (ansible.constants COLOR_*).
COLORS = {
    "ok": "32",  # green
    "changed": "33",  # yellow
    "failed": "31",  # red
    "unreachable": "1;31",  # bright red
    "skipped": "36",  # cyan
    "retry": "90",  # dark gray
    "banner": "0",
    "include": "36",
    "warning": "1;35",
    "async": "36",
}

DEBUG_ACTIONS = frozenset({"debug", "ansible.builtin.debug", "ansible.legacy.debug"})
# Keys the default callback hides from debug output.
HIDE_IN_DEBUG = frozenset(
    {"changed", "failed", "skipped", "invocation", "skip_reason", "ansible_loop_var",
     "ansible_index_var", "ansible_loop"}
)  # fmt: skip

# Keys debug keeps when it has a `msg` (ansible.plugins.callback._DEBUG_ALLOWED_KEYS).
DEBUG_ALLOWED_KEYS = frozenset({"msg", "exception", "warnings", "deprecations"})
# Shown by the default callback as [ERROR]/[WARNING] lines, never inside the result's JSON.
NOT_DUMPED = frozenset({"exception", "warnings", "deprecations"})

SUMMARY_KEYS = ("ok", "changed", "dark", "failures", "skipped", "rescued", "ignored")


def banner(msg: str) -> str:
    msg = msg.strip()
    stars = max(COLUMNS - len(msg), 3)
    return f"\n{msg} {'*' * stars}"


def _dump(res: Mapping[str, Any], pretty: bool = False) -> str:
    """The result's JSON as the default callback dumps it (the caller drops `invocation`)."""
    shown = {k: v for k, v in res.items() if k not in NOT_DUMPED}
    if pretty:
        return json.dumps(shown, indent=4, sort_keys=True, default=str, ensure_ascii=False)
    return json.dumps(shown, sort_keys=True, default=str, ensure_ascii=False)


def clean_debug(res: Mapping[str, Any]) -> dict[str, Any]:
    """What the default callback keeps of a debug result."""
    if "msg" in res:
        return {k: v for k, v in res.items() if k in DEBUG_ALLOWED_KEYS}
    return {k: v for k, v in res.items() if k not in HIDE_IN_DEBUG}


def host_label(host: str, delegated_to: str | None) -> str:
    if delegated_to and delegated_to != host:
        return f"{host} -> {delegated_to}"
    return host


def result_text(
    kind: str,
    label: str,
    res: Mapping[str, Any],
    verbose: bool,
    ignore_errors: bool = False,
    item: str | None = None,
    pretty: bool | None = None,
) -> str:
    """One result line (and its JSON) as the default callback prints it.

    `verbose`: the JSON follows ok/skipped lines (-v, or debug); `pretty`: it is indented
    (debug, or -vvv); by default the same as `verbose`. `ignore_errors` adds "...ignoring".
    """
    pretty = verbose if pretty is None else pretty
    changed = bool(res.get("changed"))
    item_part = f" => (item={item})" if item is not None else ""
    ignoring = "\n...ignoring" if ignore_errors else ""
    if kind in ("runner_on_ok", "runner_on_async_ok"):
        word = "changed" if changed else "ok"
        if verbose:
            return f"{word}: [{label}] => {_dump(res, pretty)}"
        return f"{word}: [{label}]"
    if kind == "runner_item_on_ok":
        word = "changed" if changed else "ok"
        text = f"{word}: [{label}]{item_part}"
        return f"{text} => {_dump(res, pretty)}" if verbose else text
    if kind in ("runner_on_failed", "runner_on_async_failed"):
        return f"fatal: [{label}]: FAILED! => {_dump(res, pretty)}{ignoring}"
    if kind == "runner_item_on_failed":
        return f"failed: [{label}] (item={item}) => {_dump(res, pretty)}"
    if kind == "runner_on_skipped":
        return f"skipping: [{label}] => {_dump(res, pretty)}" if verbose else f"skipping: [{label}]"
    if kind == "runner_item_on_skipped":
        text = f"skipping: [{label}]{item_part} "  # sic: Ansible leaves a trailing space
        return f"{text} => {_dump(res, pretty)}" if verbose else text
    if kind == "runner_on_unreachable":
        return f"fatal: [{label}]: UNREACHABLE! => {_dump(res, pretty)}{ignoring}"
    return ""


def recap(summary: Mapping[str, Mapping[str, int]]) -> str:
    lines = [banner("PLAY RECAP")]
    for host in sorted(summary):
        s = summary[host]
        lines.append(
            f"{host:<26} : ok={s.get('ok', 0):<4} changed={s.get('changed', 0):<4} "
            f"unreachable={s.get('dark', 0):<4} failed={s.get('failures', 0):<4} "
            f"skipped={s.get('skipped', 0):<4} rescued={s.get('rescued', 0):<4} "
            f"ignored={s.get('ignored', 0):<4}"
        )
    return "\n".join(lines) + "\n"


def color_for(event: Event) -> str | None:
    name = event.event
    if name in ("runner_on_unreachable",):
        return COLORS["unreachable"]
    if event.failed or name.endswith("_failed"):
        return COLORS["failed"]
    if name.endswith("skipped"):
        return COLORS["skipped"]
    if name == "runner_retry":
        return COLORS["retry"]
    if name in ("runner_on_ok", "runner_item_on_ok", "runner_on_async_ok"):
        return COLORS["changed"] if event.changed else COLORS["ok"]
    if name in ("playbook_on_include", "runner_on_async_poll"):
        return COLORS["include"]
    if name in ("warning", "deprecated"):
        return COLORS["warning"]
    return None


def job_output(events: Iterable[Event], color: bool = False) -> Iterable[str]:
    """The job output, line block by line block, in counter order."""
    for event in events:
        if not event.stdout:
            continue
        code = color_for(event) if color else None
        if code and code != "0":
            yield "\n".join(_colored(line, code) for line in event.stdout.split("\n"))
        else:
            yield event.stdout


def _colored(line: str, code: str) -> str:
    """Banners (printed with a result under the free strategy) stay plain; "...ignoring" is
    shown in the skip colour after a red failure, as the default callback does."""
    if not line or (line.endswith("***") and line.split(" ", 1)[0] in _BANNER_WORDS):
        return line
    if line == "...ignoring":
        code = COLORS["skipped"]
    return f"\x1b[{code}m{line}\x1b[0m"


_BANNER_WORDS = frozenset({"PLAY", "TASK", "RUNNING"})
