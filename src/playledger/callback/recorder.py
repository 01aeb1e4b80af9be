"""Builds one event per Ansible callback invocation and appends it to the run's spool.

Runs inside ansible-playbook, so it stays cheap and fork-safe: no network, no database, no
threads of its own. Ansible calls callbacks from its main thread and from the strategy's results
thread, so appends are serialised by one lock. Nothing here imports Ansible: the plugin file
hands over plain values and Ansible objects are only read through duck-typed attributes.
"""

from __future__ import annotations

import atexit
import functools
import getpass
import os
import re
import socket
import subprocess
import sys
import threading
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from playledger import __version__, render
from playledger.events import (
    GENESIS_HASH,
    Event,
    RunEnd,
    RunStart,
    encode_data,
    encode_record,
    seal,
)
from playledger.spool import SUFFIX, SpoolWriter

CENSORED = (
    "the output has been hidden due to the fact that 'no_log: true' was specified for this result"
)
REDACTED = "********"
INCLUDE_ACTIONS = frozenset(
    {
        "include_tasks",
        "include_role",
        "ansible.builtin.include_tasks",
        "ansible.builtin.include_role",
        "ansible.legacy.include_tasks",
        "ansible.legacy.include_role",
    }
)
# Results before which the default callback prints the task banner if it was not the last one
# printed (always so under the free and host_pinned strategies, which print banners lazily).
_BANNERED = frozenset(
    {
        "runner_on_ok",
        "runner_on_failed",
        "runner_on_skipped",
        "runner_on_unreachable",
        "runner_item_on_ok",
        "runner_item_on_failed",
        "runner_item_on_skipped",
    }
)
# The one result per host and task that ends it (loop items come before it).
_FINAL = frozenset(
    {"runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable"}
)
# Result keys Ansible adds for its own plumbing; `_ansible_no_log` is kept as `no_log`.
_INTERNAL_PREFIX = "_ansible_"


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RecorderConfig:
    spool_dir: Path
    fsync: str = "interval"
    fsync_interval: float = 0.2
    redact: str = ""
    run_id: str = ""
    ship: str = "auto"  # auto: start a shipper process; off: someone else drains the spool
    ansible_version: str = ""
    verbosity: int = 0


@dataclass
class _TaskRef:
    event_uuid: str
    uuid: str
    name: str
    action: str
    role: str | None
    handler: bool = False


@dataclass
class _Context:
    playbook: str | None = None
    playbook_event: str | None = None
    play: str | None = None
    play_uuid: str | None = None
    play_event: str | None = None
    tasks: dict[str, _TaskRef] = field(default_factory=dict)
    host_task: dict[str, _TaskRef] = field(default_factory=dict)  # host -> task it runs now
    started: dict[tuple[str, str], str] = field(default_factory=dict)  # (host, task) -> time
    async_running: dict[str, _TaskRef] = field(default_factory=dict)  # host -> async task
    async_jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    lazy_banners: bool = False  # free/host_pinned: task banners are printed with a result
    banners: dict[str, str] = field(default_factory=dict)  # task uuid -> its banner text
    last_banner: str | None = None  # task uuid whose banner was printed last
    # (host, notification) -> the changed task that notified it, until the handler is notified
    notified_by: dict[tuple[str, str], _TaskRef] = field(default_factory=dict)


def _task_role(task: Any) -> str | None:
    role = getattr(task, "_role", None)
    return role.get_name() if role is not None else None


def _is_no_log(task: Any, res: Mapping[str, Any] | None = None) -> bool:
    if res is not None and res.get("_ansible_no_log"):
        return True
    flag = getattr(task, "no_log", False)
    # An untemplated no_log ("{{ hide }}") counts as true: censor when in doubt.
    return bool(flag) and flag not in ("false", "False", "no", "0")


def _clean(res: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith(_INTERNAL_PREFIX)}


def _censor(res: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: res[k] for k in ("changed", "failed", "skipped", "unreachable") if k in res}
    return {"censored": CENSORED, **kept}


_F = TypeVar("_F", bound=Callable[..., None])


def _host_name(obj: Any) -> str | None:
    host = getattr(obj, "host", obj)  # a task result carries .host; runner_on_start gets a host
    try:
        return str(host.get_name())
    except Exception:
        return None


def one_event(fixed: str | None = None) -> Callable[[_F], _F]:
    """Guarantee one event per callback even when building its details fails.

    If the handler raises before its event reached the spool, a minimal event with the error
    is appended instead, then the error is re-raised so Ansible shows it as a warning. A
    failure of the append itself is re-raised as is (it is counted in the final record).
    `fixed` names the event; without it the handler's first argument is the name.
    """

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def handler(self: Recorder, *args: Any, **kwargs: Any) -> None:
            local = self._local
            local.emitted = local.append_failed = False
            try:
                fn(self, *args, **kwargs)
            except Exception as exc:
                if local.emitted or local.append_failed:
                    raise
                name = fixed or str(args[0])
                subject = args[0] if fixed else (args[1] if len(args) > 1 else None)
                host = _host_name(subject) if name.startswith("runner_") else None
                self.emit(
                    name,
                    {"playledger_error": f"{type(exc).__name__}: {exc}", "host": host},
                    parent=self._ctx.play_event or self._ctx.playbook_event,
                    host=host,
                )
                raise

        return handler  # type: ignore[return-value]

    return wrap


class Recorder:
    """One per ansible-playbook process: counter, hash chain, spool writer."""

    def __init__(
        self,
        config: RecorderConfig,
        now: Callable[[], str] = utcnow,
        new_uuid: Callable[[], str] = lambda: str(uuidlib.uuid4()),
    ) -> None:
        self.config = config
        self._now = now
        self._uuid = new_uuid
        self.run = config.run_id or new_uuid()
        self._lock = threading.Lock()
        self._local = threading.local()  # per calling thread: did this callback emit yet?
        self._writer: SpoolWriter | None = None
        self._counter = 0
        self._prev = GENESIS_HASH
        self._errors = 0
        self._pid = os.getpid()
        self._ended = False
        self._ctx = _Context()
        self._redact = re.compile(config.redact) if config.redact else None

    # --- spool ------------------------------------------------------------------------------

    def _open(self, playbook: str) -> SpoolWriter:
        cfg = self.config
        start = RunStart(
            run=self.run,
            created=self._now(),
            playbook=str(playbook),
            argv=[self._scrub(str(a)) for a in sys.argv],
            cwd=os.getcwd(),
            user=getpass.getuser(),
            controller=socket.gethostname(),
            ansible_version=cfg.ansible_version,
            playledger_version=__version__,
            pid=os.getpid(),
        )
        payload = encode_record(start)  # before the file exists: a failure leaves nothing
        writer = SpoolWriter(cfg.spool_dir / f"{self.run}{SUFFIX}", cfg.fsync, cfg.fsync_interval)
        self._writer = writer
        atexit.register(self.close)
        writer.append(payload)
        if cfg.ship == "auto":
            self._start_shipper()
        return writer

    def _start_shipper(self) -> None:
        """fork+exec a shipper that follows this run; never a thread in this process."""
        log = open(self.config.spool_dir / "shipper.log", "ab")  # noqa: SIM115 - child owns it
        try:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "playledger",
                    "ship",
                    "--follow",
                    self.run,
                    "--pid",
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PLAYLEDGER_SPOOL_DIR": str(self.config.spool_dir)},
            )
        finally:
            log.close()

    def _scrub(self, text: str) -> str:
        return self._redact.sub(REDACTED, text) if self._redact else text

    def _redact_value(self, value: Any) -> Any:
        assert self._redact is not None
        if isinstance(value, str):
            return self._redact.sub(REDACTED, value)
        if isinstance(value, Mapping):
            return {self._redact_value(str(k)): self._redact_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self._redact_value(v) for v in value]
        return value

    def emit(
        self,
        name: str,
        data: dict[str, Any],
        *,
        parent: str | None,
        host: str | None = None,
        task: _TaskRef | None = None,
        changed: bool = False,
        failed: bool = False,
        stdout: str = "",
        event_uuid: str | None = None,
    ) -> str:
        """Append one event; returns its uuid. Raises (loudly) if the spool cannot take it."""
        ctx = self._ctx
        uuid = event_uuid or self._uuid()
        if self._redact is not None:
            data = self._redact_value(data)
            stdout = self._scrub(stdout)
        event = Event(
            run=self.run,
            counter=0,
            uuid=uuid,
            parent_uuid=parent,
            created=self._now(),
            event=name,
            host=host,
            play=ctx.play,
            play_uuid=ctx.play_uuid,
            task=task.name if task else None,
            task_uuid=task.uuid if task else None,
            task_action=task.action if task else None,
            role=task.role if task else None,
            playbook=ctx.playbook,
            changed=changed,
            failed=failed,
            stdout=stdout,
            event_data=encode_data(data),
        )
        if self._redact is not None:
            for attr in ("host", "play", "task", "playbook"):
                value = getattr(event, attr)
                if value:
                    setattr(event, attr, self._scrub(value))
        with self._lock:
            try:
                if self._writer is None:
                    self._writer = self._open(ctx.playbook or "")
                event.counter = self._counter + 1
                digest = seal(event, self._prev)
                self._writer.append(encode_record(event))
            except BaseException:
                # Counted in the final record and raised: Ansible shows it as a warning and
                # `playledger run` exits non-zero. The counter is not consumed, so no hole.
                self._errors += 1
                self._local.append_failed = True
                raise
            self._counter = event.counter
            self._prev = digest
            self._local.emitted = True
        return uuid

    def close(self) -> None:
        """Write the final record (how many events were emitted) and release the spool."""
        if os.getpid() != self._pid:  # a forked worker inherited this object: not ours
            return
        with self._lock:
            if self._ended or self._writer is None:
                return
            self._ended = True
            end = RunEnd(
                run=self.run, created=self._now(), emitted=self._counter, append_errors=self._errors
            )
            try:
                self._writer.append(encode_record(end))
            finally:
                self._writer.close()

    # --- callbacks --------------------------------------------------------------------------

    def _task_ref(self, task: Any) -> _TaskRef:
        ref = self._ctx.tasks.get(task._uuid)
        if ref is None:  # a task we saw no start for (implicit tasks, includes)
            ref = _TaskRef("", task._uuid, task.get_name().strip(), task.action, _task_role(task))
        return ref

    @one_event("playbook_on_start")
    def playbook_on_start(self, playbook: Any) -> None:
        path = str(getattr(playbook, "_file_name", "") or "")
        self._ctx.playbook = path
        self._ctx.playbook_event = self.emit(
            "playbook_on_start", {"playbook": path}, parent=None, stdout=""
        )

    @one_event("playbook_on_play_start")
    def play_start(self, play: Any) -> None:
        ctx = self._ctx
        name = play.get_name().strip()
        ctx.play = name
        ctx.play_uuid = play._uuid
        ctx.lazy_banners = str(play.strategy).rsplit(".", 1)[-1] in ("free", "host_pinned")
        data: dict[str, Any] = {
            "play": name,
            "play_pattern": str(play.hosts) if play.hosts is not None else "",
            "strategy": str(play.strategy),
            "serial": play.serial,
        }
        try:
            inventory = play.get_variable_manager()._inventory
            data["hosts_targeted"] = [h.get_name() for h in inventory.get_hosts(play.hosts)]
        except Exception as exc:  # metadata only: the play itself is still recorded
            data["hosts_targeted"] = None
            data["hosts_targeted_error"] = f"{type(exc).__name__}: {exc}"
        check = " [CHECK MODE]" if getattr(play, "check_mode", False) else ""
        text = render.banner(f"PLAY [{name}]{check}" if name else f"PLAY{check}")
        ctx.play_event = self.emit(
            "playbook_on_play_start", data, parent=ctx.playbook_event, stdout=text
        )

    def task_start(self, task: Any, handler: bool) -> None:
        event_name = "playbook_on_handler_task_start" if handler else "playbook_on_task_start"
        self._task_start(event_name, task, handler)

    @one_event()
    def _task_start(self, event_name: str, task: Any, handler: bool) -> None:
        ctx = self._ctx
        name = task.get_name().strip()
        role = _task_role(task)
        no_log = _is_no_log(task)
        data: dict[str, Any] = {
            "task": name,
            "task_path": task.get_path(),
            "task_args": "" if no_log else dict(task.args),
            "is_handler": handler,
            "no_log": no_log,
        }
        event_uuid = self._uuid()
        ref = _TaskRef(event_uuid, task._uuid, name, task.action, role, handler)
        ctx.tasks[task._uuid] = ref
        prefix = "RUNNING HANDLER" if handler else "TASK"
        label = f"{role} : {name}" if role and not name.startswith(f"{role} :") else name
        banner = render.banner(f"{prefix} [{label}]")
        ctx.banners[task._uuid] = banner
        if not ctx.lazy_banners:
            ctx.last_banner = task._uuid
        self.emit(
            event_name,
            data,
            parent=ctx.play_event,
            task=ref,
            stdout="" if ctx.lazy_banners else banner,
            event_uuid=event_uuid,
        )

    @one_event("runner_on_start")
    def runner_on_start(self, host: Any, task: Any) -> None:
        ctx = self._ctx
        ref = self._task_ref(task)
        hostname = host.get_name()
        ctx.host_task[hostname] = ref
        now = self._now()
        ctx.started[(hostname, task._uuid)] = now
        data: dict[str, Any] = {"host": hostname, "task": ref.name}
        async_val = getattr(task, "async_val", 0)
        if async_val and isinstance(async_val, int) and async_val > 0:
            poll = getattr(task, "poll", 0)
            # int(): Ansible 2.19 hands tagged int subclasses, which would be encoded as strings.
            data["async"] = {"async_val": int(async_val), "poll": int(poll or 0)}
            if poll:
                ctx.async_running[hostname] = ref
        self.emit("runner_on_start", data, parent=ref.event_uuid or None, host=hostname, task=ref)

    @one_event()
    def result(
        self, name: str, result: Any, ignore_errors: bool = False, diff_text: str = ""
    ) -> None:
        """Every per-host result callback: ok, failed, skipped, unreachable, items, retries,
        async polls and outcomes, file diffs (`diff_text`: the diff as Ansible prints it)."""
        ctx = self._ctx
        task = result.task
        raw: Mapping[str, Any] = result.result
        hostname = result.host.get_name()
        no_log = _is_no_log(task, raw)
        res = _censor(raw) if no_log else _clean(raw)
        ref = self._task_ref(task)
        data: dict[str, Any] = {
            "host": hostname,
            "remote_addr": hostname,
            "res": res,
            "task_path": task.get_path(),
            "no_log": no_log,
        }
        delegated = getattr(task, "delegate_to", None)
        if delegated:
            data["delegated_to"] = str(delegated)
        if ignore_errors:
            data["ignore_errors"] = True
        started = ctx.started.get((hostname, task._uuid))
        if started is not None:
            data["start"] = started
        data["end"] = self._now()

        # Async: link polls back to the task that started them, and fire-and-forget job
        # completions (async_status results) to the task that launched the job.
        jid = raw.get("ansible_job_id")
        running = ctx.async_running.get(hostname)
        if name in ("runner_on_async_poll", "runner_on_async_ok", "runner_on_async_failed"):
            if running is not None:
                data["async_status_task_uuid"] = task._uuid
                ref = running
        elif running is not None and running.uuid == task._uuid and name in _FINAL:
            # Only the task's own result ends it: a looped task polls once per item.
            ctx.async_running.pop(hostname, None)
        if jid:
            key = (hostname, str(jid))
            launched = ctx.async_jobs.get(key)
            fire_and_forget = name in ("runner_on_ok", "runner_item_on_ok")
            if (
                fire_and_forget
                and launched is None
                and raw.get("started")
                and not raw.get("finished")
            ):
                data["async_job"] = {"jid": str(jid), "launched": True, "finished": False}
                ctx.async_jobs[key] = {"jid": str(jid), "task_uuid": ref.uuid, "task": ref.name}
            elif launched is not None and launched["task_uuid"] != ref.uuid:
                data["async_job"] = {
                    "jid": str(jid),
                    "finished": bool(raw.get("finished")),
                    "launched_by_task_uuid": launched["task_uuid"],
                    "launched_by_task": launched["task"],
                    "launched_by_event": launched.get("event"),
                }

        item: str | None = None
        if name.startswith("runner_item_on_"):
            label = raw.get("_ansible_item_label", raw.get(raw.get("ansible_loop_var", "item")))
            item = "(censored due to no_log)" if no_log else str(label)
            data["item"] = item
        if name == "runner_retry":
            data["retries"] = raw.get("retries")
            data["attempts"] = raw.get("attempts")

        stdout = self._result_stdout(name, hostname, task, raw, res, ignore_errors, item)
        if name == "runner_on_file_diff" and not no_log:
            stdout = diff_text
        if name in _BANNERED and ctx.last_banner != ref.uuid and ref.uuid in ctx.banners:
            stdout = ctx.banners[ref.uuid] + ("\n" + stdout if stdout else "")
            ctx.last_banner = ref.uuid
        # A handler's own notifications reach `notify` before its result: only tasks are kept.
        if name in ("runner_on_ok", "runner_item_on_ok") and raw.get("changed") and not ref.handler:
            for notification in getattr(task, "notify", None) or ():
                ctx.notified_by.setdefault((hostname, str(notification)), ref)
        failed = name in ("runner_on_failed", "runner_item_on_failed", "runner_on_async_failed")
        failed = failed or name == "runner_on_unreachable"
        event_uuid = self.emit(
            name,
            data,
            parent=ref.event_uuid or None,
            host=hostname,
            task=ref,
            changed=bool(raw.get("changed")),
            failed=failed and not ignore_errors,
            stdout=stdout,
        )
        if "async_job" in data and data["async_job"].get("launched"):
            ctx.async_jobs[(hostname, str(jid))]["event"] = event_uuid

    def _result_stdout(
        self,
        name: str,
        hostname: str,
        task: Any,
        raw: Mapping[str, Any],
        res: Mapping[str, Any],
        ignore_errors: bool,
        item: str | None,
    ) -> str:
        label = render.host_label(hostname, getattr(task, "delegate_to", None))
        # As CallbackBase._run_is_verbose and _dump_results decide.
        verbosity = self.config.verbosity
        always = bool(raw.get("_ansible_verbose_always"))
        verbose = (always or verbosity > 0) and not raw.get("_ansible_verbose_override")
        pretty = always or verbosity > 2
        if verbosity < 3:
            res = {k: v for k, v in res.items() if k not in ("invocation", "diff")}
        if name == "runner_retry":
            left = (raw.get("retries") or 0) - (raw.get("attempts") or 0)
            return f"FAILED - RETRYING: [{label}]: {task.get_name().strip()} ({left} retries left)."
        if name == "runner_on_async_poll":
            return (
                f"ASYNC POLL on {hostname}: jid={raw.get('ansible_job_id')} "
                f"started={raw.get('started')} finished={raw.get('finished')}"
            )
        if name == "runner_on_async_ok":
            return f"ASYNC OK on {hostname}: jid={raw.get('ansible_job_id')}"
        if name == "runner_on_async_failed":
            return f"ASYNC FAILED on {hostname}: jid={raw.get('ansible_job_id')}"
        if name == "runner_on_file_diff":
            return ""
        looped = bool(getattr(task, "loop", None)) and "results" in raw
        if looped and name in ("runner_on_ok", "runner_on_failed"):
            # the items were shown one by one
            return "...ignoring" if name == "runner_on_failed" and ignore_errors else ""
        if name in ("runner_on_ok", "runner_item_on_ok") and task.action in INCLUDE_ACTIONS:
            return ""  # shown as "included: ..." lines
        if name == "runner_on_unreachable":
            ignore_errors = bool(getattr(task, "ignore_unreachable", False))
        if task.action in render.DEBUG_ACTIONS:
            res = render.clean_debug(res)
        return render.result_text(name, label, res, verbose, ignore_errors, item, pretty)

    @one_event("playbook_on_include")
    def include(self, included_file: Any) -> None:
        task = included_file._task
        ref = self._task_ref(task)
        hosts = [h.get_name() for h in included_file._hosts]
        path = str(included_file._filename)
        data: dict[str, Any] = {"included_file": path, "hosts": hosts}
        stdout = f"included: {path} for {', '.join(hosts)}"
        included_vars = getattr(included_file, "_vars", None) or {}
        label = included_vars.get("_ansible_item_label", included_vars.get("item"))
        if label:  # an include in a loop: one event per item
            data["item"] = "(censored due to no_log)" if _is_no_log(task) else str(label)
            stdout += f" => (item={data['item']})"
        self.emit(
            "playbook_on_include",
            data,
            parent=ref.event_uuid or self._ctx.play_event,
            task=ref,
            stdout=stdout,
        )

    @one_event("playbook_on_notify")
    def notify(self, handler: Any, host: Any) -> None:
        """Linked to the task that notified: Ansible calls this when the handlers are flushed
        (or at once from a running handler), so the host's current task may be another one."""
        hostname = host.get_name()
        current = self._ctx.host_task.get(hostname)
        listen = getattr(handler, "listen", None) or []
        listen = [listen] if isinstance(listen, str) else list(listen)
        names = [handler.get_name(), getattr(handler, "name", None), *listen]
        notifiers = [self._ctx.notified_by.pop((hostname, str(n)), None) for n in names]
        current = next((n for n in notifiers if n is not None), current)
        self.emit(
            "playbook_on_notify",
            {"handler": handler.get_name(), "host": hostname},
            parent=current.event_uuid if current else self._ctx.play_event,
            host=hostname,
            task=current,
        )

    @one_event()
    def simple(self, name: str, data: dict[str, Any], stdout: str = "") -> None:
        self.emit(
            name, data, parent=self._ctx.play_event or self._ctx.playbook_event, stdout=stdout
        )

    @one_event("playbook_on_stats")
    def stats(self, stats: Any) -> None:
        fields = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")
        summary = {
            host: {f: int(getattr(stats, f).get(host, 0)) for f in fields}
            for host in sorted(stats.processed)
        }
        data = {"summary": summary, "custom": dict(stats.custom), "emitted": self._counter + 1}
        self.emit(
            "playbook_on_stats",
            data,
            parent=self._ctx.playbook_event,
            failed=any(s["failures"] or s["dark"] for s in summary.values()),
            stdout=render.recap(summary),
        )
