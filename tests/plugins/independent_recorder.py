# An independent recorder for tests: writes one JSON line per v2_* callback invocation it
# receives, with no playledger code involved, so the stored events can be compared against it.
from __future__ import annotations

DOCUMENTATION = """
    name: independent_recorder
    type: notification
    short_description: test-only recorder of every callback invocation
    description: [Writes one JSON line per callback call to $INDEPENDENT_RECORDER_FILE.]
"""

import json
import os
import threading
from typing import Any

from ansible.plugins.callback import CallbackBase

_RESULT_METHODS = (
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
)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "independent_recorder"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._path = os.environ["INDEPENDENT_RECORDER_FILE"]

    def _write(self, name: str, host: str | None = None, task_uuid: str | None = None) -> None:
        line = json.dumps({"event": name, "host": host, "task_uuid": task_uuid})
        with self._lock, open(self._path, "a") as f:
            f.write(line + "\n")

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._write("playbook_on_start")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._write("playbook_on_play_start")

    def v2_playbook_on_task_start(self, task: Any, is_conditional: Any) -> None:
        self._write("playbook_on_task_start", task_uuid=task._uuid)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._write("playbook_on_handler_task_start", task_uuid=task._uuid)

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._write("runner_on_start", host.get_name(), task._uuid)

    def v2_playbook_on_include(self, included_file: Any) -> None:
        self._write("playbook_on_include")

    def v2_playbook_on_notify(self, handler: Any, host: Any) -> None:
        self._write("playbook_on_notify", host.get_name())

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self._write("playbook_on_no_hosts_matched")

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        self._write("playbook_on_no_hosts_remaining")

    def v2_on_file_diff(self, result: Any) -> None:
        self._write("runner_on_file_diff", result.host.get_name())

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._write("playbook_on_stats")


def _make(name: str) -> Any:
    def method(self: CallbackModule, result: Any, *args: Any, **kwargs: Any) -> None:
        self._write(name, result.host.get_name(), result.task._uuid)

    return method


for _name in _RESULT_METHODS:
    setattr(CallbackModule, f"v2_{_name}", _make(_name))
