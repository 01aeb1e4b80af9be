"""The event record, its canonical encoding and the per-run hash chain.

Three record kinds travel through the spool: `RunStart` (who ran what, where), `Event` (exactly
one per Ansible callback invocation) and `RunEnd` (written when ansible-playbook exits; states
how many events were emitted). Only events are chained: each carries the hash of its
predecessor, and the hash covers every other field, so `verify` can recompute it from the store.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

EVENT_NAMES = frozenset(
    {
        "playbook_on_start",
        "playbook_on_play_start",
        "playbook_on_task_start",
        "playbook_on_handler_task_start",
        "playbook_on_include",
        "playbook_on_notify",
        "playbook_on_no_hosts_matched",
        "playbook_on_no_hosts_remaining",
        "playbook_on_stats",
        "playbook_on_vars_prompt",
        "runner_on_start",
        "runner_on_ok",
        "runner_on_failed",
        "runner_on_skipped",
        "runner_on_unreachable",
        "runner_on_async_poll",
        "runner_on_async_ok",
        "runner_on_async_failed",
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_item_on_skipped",
        "runner_retry",
        "runner_on_file_diff",
        "verbose",
        "warning",
        "deprecated",
        "debug",
        "error",
    }
)

GENESIS_HASH = "0" * 64
EMPTY_OBJECT = msgspec.Raw(b"{}")


class RunStart(msgspec.Struct, tag="run", tag_field="kind", frozen=True):
    run: str
    created: str
    playbook: str
    argv: list[str]
    cwd: str
    user: str
    controller: str
    ansible_version: str
    playledger_version: str
    pid: int


class Event(msgspec.Struct, tag="event", tag_field="kind"):
    run: str
    counter: int
    uuid: str
    parent_uuid: str | None
    created: str
    event: str
    host: str | None = None
    play: str | None = None
    play_uuid: str | None = None
    task: str | None = None
    task_uuid: str | None = None
    task_action: str | None = None
    role: str | None = None
    playbook: str | None = None
    changed: bool = False
    failed: bool = False
    stdout: str = ""
    event_data: msgspec.Raw = EMPTY_OBJECT
    prev_hash: str = GENESIS_HASH
    hash: str = ""


class RunEnd(msgspec.Struct, tag="end", tag_field="kind", frozen=True):
    run: str
    created: str
    emitted: int
    append_errors: int = 0


Record = RunStart | Event | RunEnd

record_decoder = msgspec.json.Decoder(Record)


def _fallback(obj: Any) -> Any:
    """Encode what JSON lacks losslessly enough to read: subclasses as their base, others as str.

    Ansible 2.19 hands callbacks tagged subclasses of str/dict/list; results may also hold
    bytes, sets or dates. Nothing is turned into `{}` or dropped.
    """
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "backslashreplace")
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_fallback)


def _plain(value: Any) -> Any:
    """Last resort for shapes JSON cannot key (tuple or object dict keys): stringify keys."""
    if isinstance(value, dict):
        return {
            k if isinstance(k, (str, int, float)) else str(k): _plain(v) for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def encode_data(data: Any) -> msgspec.Raw:
    """JSON for `event_data` (any Ansible result), kept verbatim from here on."""
    try:
        return msgspec.Raw(_encoder.encode(data))
    except (TypeError, msgspec.EncodeError):
        return msgspec.Raw(_encoder.encode(_plain(data)))


def encode_record(record: Record) -> bytes:
    return _encoder.encode(record)


def event_hash(event: Event) -> str:
    """sha256 over the canonical encoding of every field but `hash` (prev_hash included)."""
    saved = event.hash
    event.hash = ""
    try:
        return hashlib.sha256(_encoder.encode(event)).hexdigest()
    finally:
        event.hash = saved


def seal(event: Event, prev_hash: str) -> str:
    """Link `event` to its predecessor and return its own hash."""
    event.prev_hash = prev_hash
    event.hash = event_hash(event)
    return event.hash
