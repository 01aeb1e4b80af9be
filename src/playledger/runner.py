"""`playledger run`: ansible-playbook with the playledger callback added, plus a shipper.

The callback is *added* to whatever callbacks the user enabled (environment or ansible.cfg);
nothing the user configured is replaced, and any stdout callback keeps working.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType

from playledger.callback import plugin_path
from playledger.errors import PlayledgerError, RunNotFound, StoreError
from playledger.settings import Settings
from playledger.spool import SpoolFile, check_writable
from playledger.store import open_store
from playledger.verify import VerifyReport, verify_run


def _configured(name: str, environ: Mapping[str, str]) -> list[str]:
    """An Ansible list setting as ansible-playbook would see it (env, then ansible.cfg)."""
    from ansible.config.manager import ConfigManager

    # ConfigManager reads the process environment; run() passes os.environ itself.
    assert environ is os.environ or dict(environ) == dict(os.environ)
    value = ConfigManager().get_config_value(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return [str(v) for v in value]


def ansible_environment(
    environ: Mapping[str, str], settings: Settings, run_id: str
) -> dict[str, str]:
    """The environment for ansible-playbook: the user's, with playledger added to it."""
    env = dict(environ)
    enabled = _configured("CALLBACKS_ENABLED", env)
    if "playledger" not in enabled:
        enabled.append("playledger")
    paths = _configured("DEFAULT_CALLBACK_PLUGIN_PATH", env)
    ours = str(plugin_path())
    if ours not in paths:
        paths.append(ours)
    env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(enabled)
    env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(paths)
    env["PLAYLEDGER_RUN_ID"] = run_id
    env["PLAYLEDGER_SHIP"] = "off"  # this process starts the shipper and waits for it
    env["PLAYLEDGER_SPOOL_DIR"] = str(settings.spool_dir)
    env["PLAYLEDGER_FSYNC"] = settings.fsync
    env["PLAYLEDGER_FSYNC_INTERVAL"] = str(settings.fsync_interval)
    env["PLAYLEDGER_REDACT"] = settings.redact
    return env


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise PlayledgerError("ansible-playbook not found (install ansible-core >= 2.19)")
    return found


@dataclass
class RunOutcome:
    exit_code: int
    report: VerifyReport | None
    shipper_exit: int
    hosts: int = 0


def run_playbook(args: Sequence[str], settings: Settings) -> RunOutcome:
    """Run ansible-playbook with recording; returns its exit code and the verify report."""
    check_writable(settings.spool_dir)  # refuse before Ansible starts, not halfway through
    if not settings.sink:  # likewise a store that cannot be opened
        store = open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
        store.close()
    run_id = str(uuidlib.uuid4())
    env = ansible_environment(os.environ, settings, run_id)
    ansible: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Ctrl-C reaches ansible-playbook from the terminal itself; a SIGTERM sent to us is
        # passed on, so Ansible stops the way it would have stopped on its own.
        if signum == signal.SIGTERM and ansible is not None and ansible.poll() is None:
            ansible.send_signal(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ansible = subprocess.Popen([ansible_playbook(), *args], env=env)
        shipper = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "playledger",
                "ship",
                "--follow",
                run_id,
                "--pid",
                str(ansible.pid),
            ],
            env={
                **os.environ,
                "PLAYLEDGER_SPOOL_DIR": str(settings.spool_dir),
                "PLAYLEDGER_DB": settings.db,
                "PLAYLEDGER_SINK": settings.sink,
                "PLAYLEDGER_TOKEN": settings.token,
            },
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C stops Ansible, not the shipper draining its events
        )
        rc = ansible.wait()
        if rc < 0:  # killed by a signal: report it the way a shell does (128 + signal)
            rc = 128 - rc
        shipper_rc = shipper.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    if settings.sink:
        return _outcome_from_server(settings, run_id, rc, shipper_rc)
    store = open_store(settings.db, settings.busy_timeout, settings.db_pool_size)
    try:
        try:
            run = store.run(run_id)
        except PlayledgerError:
            return RunOutcome(rc, None, shipper_rc)  # Ansible stopped before the first event
        store.set_exit_code(run_id, rc)
        run = store.run(run_id)
        return RunOutcome(rc, verify_run(store, run, settings.spool_dir), shipper_rc, run.hosts)
    finally:
        store.close()


def _outcome_from_server(settings: Settings, run_id: str, rc: int, shipper_rc: int) -> RunOutcome:
    """With a remote sink (HTTP server or NATS workers): the exit code goes to the store and
    the verify report comes from it; what is still in the local spool (or quarantined in it)
    is added from here."""
    from playledger.sinks import open_remote_sink

    sink = open_remote_sink(settings)
    try:
        try:
            sink.set_exit_code(run_id, rc)
            data = sink.verify(run_id)
        except RunNotFound:
            return RunOutcome(rc, None, shipper_rc)  # nothing reached the server
        except StoreError as exc:
            pending = SpoolFile(settings.spool_dir, run_id).backlog()[0]
            raise StoreError(
                f"run {run_id}: cannot read its verify report: {exc}; {pending:,} records are "
                "still in the spool (`playledger ship` stores them once the server is back)"
            ) from exc
    finally:
        sink.close()
    known = {f.name for f in fields(VerifyReport)}
    values = {k: v for k, v in data.items() if k in known}
    values["missing"] = [(int(a), int(b)) for a, b in values.get("missing", [])]
    report = VerifyReport(**values)
    spool = SpoolFile(settings.spool_dir, run_id)
    report.spool_pending = spool.backlog()[0]
    report.quarantined = spool.quarantined()
    return RunOutcome(rc, report, shipper_rc, int(data.get("hosts") or 0))
