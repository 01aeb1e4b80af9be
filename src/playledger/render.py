"""Job output: the text Ansible's default callback prints for each event, and its colours.

The callback stores plain text in `stdout`; colour is applied when shown, from the event kind,
the way the default callback colours it (green ok, yellow changed, red failed, cyan skipped).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from playledger.events import Event

COLUMNS = 80

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

SUMMARY_KEYS = ("ok", "changed", "dark", "failures", "skipped", "rescued", "ignored")


def banner(msg: str) -> str:
    msg = msg.strip()
    stars = max(COLUMNS - len(msg), 3)
    return f"\n{msg} {'*' * stars}"


def _dump(res: Mapping[str, Any], verbose: bool = False) -> str:
    shown = {k: v for k, v in res.items() if k != "invocation" or verbose}
    if verbose:
        return json.dumps(shown, indent=4, sort_keys=True, default=str)
    return json.dumps(shown, sort_keys=True, default=str)


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
) -> str:
    """One result line (and its JSON) as the default callback prints it."""
    changed = bool(res.get("changed"))
    item_part = f" => (item={item})" if item is not None else ""
    if kind in ("runner_on_ok", "runner_on_async_ok"):
        word = "changed" if changed else "ok"
        if verbose:
            return f"{word}: [{label}] => {_dump(res, True)}"
        return f"{word}: [{label}]"
    if kind == "runner_item_on_ok":
        word = "changed" if changed else "ok"
        text = f"{word}: [{label}]{item_part}"
        return f"{text} => {_dump(res, True)}" if verbose else text
    if kind in ("runner_on_failed", "runner_on_async_failed"):
        text = f"fatal: [{label}]: FAILED! => {_dump(res, verbose)}"
        return text + ("\n...ignoring" if ignore_errors else "")
    if kind == "runner_item_on_failed":
        return f"failed: [{label}] (item={item}) => {_dump(res, verbose)}"
    if kind == "runner_on_skipped":
        return f"skipping: [{label}]"
    if kind == "runner_item_on_skipped":
        return f"skipping: [{label}]{item_part}"
    if kind == "runner_on_unreachable":
        return f"fatal: [{label}]: UNREACHABLE! => {_dump(res, verbose)}"
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
            yield "\n".join(
                f"\x1b[{code}m{line}\x1b[0m" if line else line for line in event.stdout.split("\n")
            )
        else:
            yield event.stdout
