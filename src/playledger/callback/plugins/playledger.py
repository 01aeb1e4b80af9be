# playledger callback plugin: appends every event of the run to a local durable spool.
# Enable with ANSIBLE_CALLBACK_PLUGINS=$(playledger callback-path) and
# ANSIBLE_CALLBACKS_ENABLED=playledger (or let `playledger run` do both).
from __future__ import annotations

DOCUMENTATION = """
    name: playledger
    type: notification
    short_description: record every event of the run into a durable spool for playledger
    description:
      - One event per callback invocation, numbered 1..N, hash-chained, appended to a local
        per-run spool file. A separate shipper process drains the spool into the store.
      - The plugin never talks to the network or the database.
    requirements:
      - playledger installed in the Python that runs ansible-playbook
    options:
      spool_dir:
        description: Folder for per-run spool files.
        env:
          - name: PLAYLEDGER_SPOOL_DIR
        ini:
          - section: playledger
            key: spool_dir
        type: path
      fsync:
        description: "Spool fsync policy: always, interval or never."
        default: interval
        env:
          - name: PLAYLEDGER_FSYNC
        ini:
          - section: playledger
            key: fsync
        choices: [always, interval, never]
      fsync_interval:
        description: Seconds between spool fsyncs under the interval policy.
        default: 0.2
        type: float
        env:
          - name: PLAYLEDGER_FSYNC_INTERVAL
        ini:
          - section: playledger
            key: fsync_interval
      redact:
        description: >-
          Regular expression; matches in every recorded string are masked before the
          first write.
        default: ""
        env:
          - name: PLAYLEDGER_REDACT
        ini:
          - section: playledger
            key: redact
      ship:
        description: >-
          auto: start a shipper process that drains the spool while the run goes on;
          off: leave it to C(playledger run) or C(playledger ship).
        default: auto
        choices: [auto, "off"]
        env:
          - name: PLAYLEDGER_SHIP
        ini:
          - section: playledger
            key: ship
      run_id:
        description: Run uuid to record under (set by C(playledger run)); a new one when empty.
        default: ""
        env:
          - name: PLAYLEDGER_RUN_ID
"""

from typing import Any

from ansible import release
from ansible.plugins.callback import CallbackBase
from ansible.utils.display import Display

from playledger.callback.recorder import Recorder, RecorderConfig
from playledger.settings import Settings

display = Display()


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "playledger"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rec: Recorder | None = None

    def set_options(
        self, task_keys: Any = None, var_options: Any = None, direct: Any = None
    ) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        # Defaults (the spool folder) come from the one settings table.
        settings = Settings.load(spool_dir=self.get_option("spool_dir") or None)
        config = RecorderConfig(
            spool_dir=settings.spool_dir,
            fsync=self.get_option("fsync"),
            fsync_interval=float(self.get_option("fsync_interval")),
            redact=self.get_option("redact") or "",
            run_id=self.get_option("run_id") or "",
            ship=self.get_option("ship"),
            ansible_version=release.__version__,
            verbosity=display.verbosity,
        )
        self._rec = Recorder(config)

    @property
    def rec(self) -> Recorder:
        if self._rec is None:
            self.set_options()
        assert self._rec is not None
        return self._rec

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self.rec.playbook_on_start(playbook)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self.rec.play_start(play)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: Any) -> None:
        self.rec.task_start(task, handler=False)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self.rec.task_start(task, handler=True)

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self.rec.runner_on_start(host, task)

    def v2_runner_on_ok(self, result: Any) -> None:
        self.rec.result("runner_on_ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self.rec.result("runner_on_failed", result, ignore_errors=ignore_errors)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self.rec.result("runner_on_skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self.rec.result("runner_on_unreachable", result)

    def v2_runner_on_async_poll(self, result: Any) -> None:
        self.rec.result("runner_on_async_poll", result)

    def v2_runner_on_async_ok(self, result: Any) -> None:
        self.rec.result("runner_on_async_ok", result)

    def v2_runner_on_async_failed(self, result: Any) -> None:
        self.rec.result("runner_on_async_failed", result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self.rec.result("runner_item_on_ok", result)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self.rec.result("runner_item_on_failed", result)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        self.rec.result("runner_item_on_skipped", result)

    def v2_runner_retry(self, result: Any) -> None:
        self.rec.result("runner_retry", result)

    def v2_on_file_diff(self, result: Any) -> None:
        self.rec.result("runner_on_file_diff", result, diff_text=self._diff_text(result))

    def _diff_text(self, result: Any) -> str:
        """The diff text the default callback prints (rendered with Ansible's own _get_diff)."""
        res = result.result
        if result.task.loop and "results" in res:
            diffs = [r["diff"] for r in res["results"] if r.get("diff") and r.get("changed")]
        elif res.get("diff") and res.get("changed"):
            diffs = [res["diff"]]
        else:
            return ""
        try:
            texts = [self._get_diff(diff) for diff in diffs]
        except Exception as exc:  # only the shown text is lost; the diff stays in event_data
            return f"(diff not rendered: {type(exc).__name__}: {exc})"
        shown = "".join(t if t.endswith("\n") else t + "\n" for t in texts if t)
        return shown[:-1]  # the job output adds the final newline

    def v2_playbook_on_include(self, included_file: Any) -> None:
        self.rec.include(included_file)

    def v2_playbook_on_notify(self, handler: Any, host: Any) -> None:
        self.rec.notify(handler, host)

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self.rec.simple("playbook_on_no_hosts_matched", {}, "skipping: no hosts matched")

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        self.rec.simple("playbook_on_no_hosts_remaining", {}, "\nNO MORE HOSTS LEFT " + "*" * 61)

    def v2_playbook_on_vars_prompt(
        self,
        varname: str,
        private: bool = True,
        prompt: str | None = None,
        encrypt: Any = None,
        confirm: bool = False,
        salt_size: Any = None,
        salt: Any = None,
        default: Any = None,
        unsafe: Any = None,
    ) -> None:
        # The answer is never passed to callbacks; record only what was asked.
        self.rec.simple("playbook_on_vars_prompt", {"varname": varname, "prompt": prompt})

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self.rec.stats(stats)
